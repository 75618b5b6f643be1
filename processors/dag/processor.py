"""The DAG processor: `lattice.blocks.proposed` in, `lattice.blocks.ordered` out.

A thin shell around `DagOrderer`: it decodes each proposed block, skips what its store says
it already applied, lets the orderer judge and order it, sends the chain blocks that became
final, and only once the broker has acknowledged them commits, in one rocksdict batch, the
block, the input offset and the last emitted chain index.

Restart: the stored blocks are replayed through a fresh orderer (the same inputs in the same
order give the same state), and outputs the output topic already holds are not sent again
(matched by chain index), so a crash between sending and committing leaves no duplicate.

The input topic has one partition and every DAG processor reads all of it, so processors
with different group ids are independent replicas whose outputs are byte-identical. Adding
members to one group does not scale ordering (it is sequential by nature); it is for
standby only.
"""

from __future__ import annotations

import logging
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processors.dag.ordering import DagOrderer
from processors.state import ProcessorState
from schemas.codec import default_codec
from streams.kafka import Producer, Reader
from streams.metrics import BLOCK_ORDERING_SECONDS, EVENTS
from streams.topics import TopicSpec, topic

log = logging.getLogger(__name__)

PROPOSED = topic("blocks.proposed")
ORDERED = topic("blocks.ordered")
_BLOCK = b"block/"
_EMITTED = b"emitted"
_META = struct.Struct(">iqq")  # partition, offset, logged-at ms


@dataclass(frozen=True)
class DagConfig:
    genesis: bytes
    k: int = 18
    finality_depth: int = 10
    prune_depth: int = 1000


class DagProcessor:
    def __init__(
        self,
        bootstrap: str,
        state_dir: Path,
        config: DagConfig,
        *,
        group_id: str = "lattice-dag",
        output: TopicSpec = ORDERED,
    ) -> None:
        self.bootstrap = bootstrap
        self.config = config
        self.group_id = group_id
        self.output = output
        self.state = ProcessorState(state_dir)
        self.orderer = self._new_orderer()
        self.codec = default_codec()
        self.producer = Producer(bootstrap, client_id=f"{group_id}-out")
        self.emitted = self.state.get_int(_EMITTED, 0)
        self._sequence = 0
        self._restore()

    def _new_orderer(self) -> DagOrderer:
        c = self.config
        return DagOrderer(
            c.genesis, k=c.k, finality_depth=c.finality_depth, prune_depth=c.prune_depth
        )

    def _restore(self) -> None:
        """Rebuild the orderer from the stored blocks; learn what the output already holds."""
        replayed = 0
        for key, value in self.state.scan(_BLOCK):
            partition, offset, logged = _META.unpack_from(value)
            record = self.codec.decode(value[_META.size :], expect=PROPOSED.schema).record
            position = {"topic": PROPOSED.name, "partition": partition, "offset": offset}
            self.orderer.accept(record, position, logged)
            self._sequence = int(key[len(_BLOCK) :]) + 1
            replayed += 1
        on_topic = last_chain_index(self.bootstrap, self.output)
        self.emitted = max(self.emitted, on_topic)
        if replayed:
            log.info(
                "replayed %d blocks; chain index %d final, %d on %s",
                replayed,
                self.orderer.chain_index,
                on_topic,
                self.output.name,
            )

    def resume_from(self) -> int:
        """The next input offset to read."""
        stored = self.state.offset(PROPOSED.name, 0)
        return 0 if stored is None else stored + 1

    def handle(self, message: Any) -> int:
        """Apply one `lattice.blocks.proposed` message; returns how many blocks it ordered."""
        partition, offset = message.partition(), message.offset()
        stored = self.state.offset(PROPOSED.name, partition)
        if stored is not None and offset <= stored:
            return 0  # at-least-once delivery: already applied
        value = message.value()
        puts: dict[bytes, bytes] = {}
        try:
            record = self.codec.decode(value, expect=PROPOSED.schema).record
        except ValueError as exc:
            log.warning("skipping undecodable block at offset %d: %s", offset, exc)
            outputs: list[dict[str, Any]] = []
        else:
            logged = message.timestamp()[1]
            position = {"topic": PROPOSED.name, "partition": partition, "offset": offset}
            outputs = self.orderer.accept(record, position, logged)
            block = record["hash"]
            if block in self.orderer.blocks or block in self.orderer.pending:
                puts[_BLOCK + b"%016d" % self._sequence] = (
                    _META.pack(partition, offset, logged) + value
                )
                self._sequence += 1
            for rejection in self.orderer.rejected:
                log.warning("rejected block %s: %s", rejection.block.hex(), rejection.reason)
            self.orderer.rejected.clear()
        futures = [
            self.producer.send(self.output, out, timestamp_ms=out["timestamp_ms"])
            for out in outputs
            if out["chain_index"] > self.emitted
        ]
        for future in futures:
            future.result(timeout=60)
        now = time.time()
        for out in outputs:
            if out["chain_index"] > self.emitted:
                BLOCK_ORDERING_SECONDS.observe(max(0.0, now - out["timestamp_ms"] / 1000))
                EVENTS.labels("dag", self.output.name, "out").inc()
        if outputs:
            self.emitted = max(self.emitted, outputs[-1]["chain_index"])
        self.state.commit({(PROPOSED.name, partition): offset}, puts, {_EMITTED: self.emitted})
        return len(outputs)

    def close(self) -> None:
        self.producer.close()
        self.state.close()


def last_chain_index(bootstrap: str, output: TopicSpec) -> int:
    """The chain index of the last record on an ordered topic (0 when empty)."""
    reader = Reader(bootstrap, client_id="lattice-dag-tail")
    try:
        ends = reader.end_offsets(output.name)
        last = 0
        for partition, (low, end) in ends.items():
            if end > low:
                key = (output.name, partition)
                for message in reader.read({key: end - 1}, until={key: end}):
                    last = max(last, reader.decode(message).value["chain_index"])
        return last
    finally:
        reader.close()
