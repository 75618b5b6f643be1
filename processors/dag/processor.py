"""The DAG processor: `lattice.blocks.proposed` in, `lattice.blocks.ordered` and
`lattice.blocks.virtual` out.

A thin shell around `DagOrderer`, run by `processors.runtime.Runtime`: each proposed block
goes to the orderer; the chain blocks that became final go to the ordered topic and the
change of the virtual selected chain it made, if any, to the virtual topic (what the
optimistic head executes); the block itself is kept in the store (`block/<sequence>`, with
its partition, offset and log time) in the same commit as the input offset.

Restart: the stored blocks are replayed through a fresh orderer (the same inputs in the same
order give the same state), then reading resumes after the stored offset; the runtime's
outbox sends what a crash left unsent, once. A store lost and rebuilt from the topic does
not emit again what the output topic already holds (`Pace.rebuild_window`: the ordered topic
has one writer, so its last records say how far the lost store got).

The input topic has one partition and every DAG processor reads all of it, so processors
with different names are independent replicas whose outputs are byte-identical. Adding
members with one name does not scale ordering (it is sequential by nature); it is for
standby only.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from processors.abc import Output, Pace, Processor, Subscription
from processors.dag.ordering import DagOrderer
from processors.state import RocksStore
from schemas.codec import default_codec
from schemas.events import BlockProposed, Position
from streams.kafka import Record
from streams.metrics import BLOCK_ORDERING_SECONDS
from streams.topics import TopicSpec, topic

log = logging.getLogger(__name__)

PROPOSED = topic("blocks.proposed")
ORDERED = topic("blocks.ordered")
VIRTUAL = topic("blocks.virtual")
_BLOCK = b"block/"
#: Written by a store that has sent the virtual chain's changes from its first block.
_VIRTUAL_FROM_START = b"virtual/from-start"
_META = struct.Struct(">iqq")  # partition, offset, logged-at ms


def virtual_topic(output: TopicSpec) -> TopicSpec:
    """Where the virtual chain's changes go beside an ordered topic: `blocks.virtual`
    beside `blocks.ordered`, `<name>.virtual` beside another (a replica writing apart)."""
    if output.name == ORDERED.name:
        return VIRTUAL
    return TopicSpec(f"{output.name}.virtual", VIRTUAL.schema, VIRTUAL.key, 1, doc=VIRTUAL.doc)


@dataclass(frozen=True)
class DagConfig:
    genesis: bytes
    k: int = 18
    finality_depth: int = 10
    prune_depth: int = 1000


class DagProcessor(Processor[RocksStore]):
    role = "dag"
    pace = Pace(rebuild_window=1000)

    def __init__(
        self,
        config: DagConfig,
        *,
        name: str = "lattice-dag",
        output: TopicSpec = ORDERED,
    ) -> None:
        self.name = name
        self.config = config
        self.output = output
        self.virtual = virtual_topic(output)
        self.orderer = DagOrderer(
            config.genesis,
            k=config.k,
            finality_depth=config.finality_depth,
            prune_depth=config.prune_depth,
            follows_virtual=True,
        )
        self._sequence = 0

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(PROPOSED),)

    def outputs(self) -> Sequence[TopicSpec]:
        return (self.output, self.virtual)

    def restore(self, state: RocksStore) -> None:
        """Rebuild the orderer from the stored blocks."""
        codec = default_codec()
        replayed = 0
        for key, value in state.scan(_BLOCK):
            partition, offset, logged = _META.unpack_from(value)
            block = codec.decode_as(value[_META.size :], BlockProposed)
            position = Position(topic=PROPOSED.name, partition=partition, offset=offset)
            self.orderer.accept(block, position, logged)
            self.orderer.virtual_change(position)  # told before: counted, not sent again
            self._sequence = int(key[len(_BLOCK) :]) + 1
            replayed += 1
        self.orderer.rejected.clear()
        if replayed and state.get(_VIRTUAL_FROM_START) is None:
            raise RuntimeError(
                f"{self.name}: this store ordered blocks before the DAG processor sent the "
                "virtual chain's changes (lattice.blocks.virtual), which execution now follows "
                "from its first one: delete the store to rebuild it from the log (what "
                "lattice.blocks.ordered holds is not sent again)"
            )
        state.put(_VIRTUAL_FROM_START, b"1")
        if replayed:
            log.info("replayed %d blocks; chain index %d final", replayed, self.orderer.chain_index)

    def handle(self, record: Record[Any], state: RocksStore) -> Sequence[Output]:
        block = record.event
        if not isinstance(block, BlockProposed):
            log.warning("ignoring a %s on %s", block.SCHEMA, record.topic)
            return ()
        final = self.orderer.accept(block, record.position, record.timestamp_ms)
        change = self.orderer.virtual_change(record.position)
        if block.hash in self.orderer.blocks or block.hash in self.orderer.pending:
            meta = _META.pack(record.partition, record.offset, record.timestamp_ms)
            state.put(_BLOCK + b"%016d" % self._sequence, meta + record.raw)
            self._sequence += 1
        for rejection in self.orderer.rejected:
            log.warning("rejected block %s: %s", rejection.block.hex(), rejection.reason)
        self.orderer.rejected.clear()
        now = time.time()
        for ordered in final:
            BLOCK_ORDERING_SECONDS.observe(max(0.0, now - ordered.timestamp_ms / 1000))
        outputs = [Output(self.output, o, timestamp_ms=o.timestamp_ms) for o in final]
        if change is not None:
            outputs.append(Output(self.virtual, change, timestamp_ms=block.timestamp_ms))
        return outputs
