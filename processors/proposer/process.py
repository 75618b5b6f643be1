"""A block proposer: mempool in, signed blocks out.

Each proposer has its own secp256k1 key. Proposers share `lattice.tx.submitted` through one
consumer group (transactions are keyed by sender, so a sender's transactions reach one
proposer at a time, in nonce order). Every proposer also reads all of
`lattice.blocks.proposed` through its own `DagOrderer`, the same code on the same single
partition the DAG processor reads, so it knows the DAG tips and the final chain exactly as
the DAG processor will. Every `interval` it publishes a block whose parents are the tips it
knows, less any tip that would make the block leave the final chain (Kaspa's rule for block
templates), with transactions from its mempool; then it drops them from the mempool.

Start-up reads the whole block topic first, so transactions already in blocks are known
before the mempool fills.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from coincurve import PrivateKey
from confluent_kafka import Consumer, KafkaError
from eth_hash.auto import keccak

from processors.dag.blocks import MAX_BLOCK_BYTES, MAX_PARENTS, Proposer, genesis_hash
from processors.dag.ordering import DagOrderer
from processors.execution.transactions import ChainRules, InvalidTransaction, decode_transaction
from processors.proposer.mempool import Mempool
from schemas.codec import CodecError, default_codec
from streams.kafka import Producer, Reader, client_config
from streams.metrics import MEMPOOL_SIZE
from streams.topics import hex_key, topic

log = logging.getLogger(__name__)

TX_SUBMITTED = topic("tx.submitted")
PROPOSED = topic("blocks.proposed")


def devnet_key(index: int) -> PrivateKey:
    """The devnet's well-known proposer keys (public: for a development network only)."""
    return PrivateKey(keccak(b"lattice devnet proposer %d" % index))


class ProposerProcess:
    def __init__(
        self,
        bootstrap: str,
        key: PrivateKey,
        *,
        chain_id: int,
        interval_s: float = 1.0,
        k: int = 18,
        finality_depth: int = 10,
        max_block_txs: int = 2000,
        group_id: str = "lattice-proposers",
        rules: ChainRules | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.proposer = Proposer(key)
        self.interval_s = interval_s
        self.max_block_txs = max_block_txs
        self.group_id = group_id
        self.rules = rules or ChainRules(chain_id)
        self.codec = default_codec()
        self.orderer = DagOrderer(genesis_hash(chain_id), k=k, finality_depth=finality_depth)
        self.mempool = Mempool()
        self.sequence = 0
        self.published = 0
        #: Blocks this process proposed and has not read back yet: reading one back needs
        #: no decoding (each decode recovers a signature).
        self._proposed: set[bytes] = set()
        self.producer = Producer(bootstrap, client_id=f"proposer-{self.address[:10]}")

    @property
    def address(self) -> str:
        return hex_key(self.proposer.address)

    # -- following the DAG -------------------------------------------------------------

    def on_block(self, message: Any) -> None:
        try:
            record = self.codec.decode(message.value(), expect=PROPOSED.schema).record
        except CodecError:
            return
        position = {"topic": PROPOSED.name, "partition": 0, "offset": message.offset()}
        self.orderer.accept(record, position, message.timestamp()[1])
        self.orderer.rejected.clear()
        if record["proposer"] == self.proposer.address:
            self.sequence = max(self.sequence, record["sequence"] + 1)
        if record["hash"] in self._proposed:  # its transactions left the mempool at proposing
            self._proposed.discard(record["hash"])
            return
        included = []
        for raw in record["transactions"]:
            try:
                included.append(decode_transaction(raw, self.rules))
            except InvalidTransaction:
                continue
        self.mempool.mark_included(included)

    # -- taking transactions -----------------------------------------------------------

    def on_transaction(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            raw = self.codec.decode(value, expect=TX_SUBMITTED.schema).record["raw"]
            outcome = self.mempool.add(decode_transaction(raw, self.rules))
        except (CodecError, InvalidTransaction) as exc:
            log.warning("ignoring a submitted transaction: %s", exc)
            return
        if outcome not in ("added", "replaced"):
            log.debug("transaction %s", outcome)

    # -- proposing ---------------------------------------------------------------------

    def parents(self) -> list[bytes]:
        """The tips, less those that would take the block off the final chain."""
        data = self.orderer.ghostdag.data
        best = self.orderer.selected_tip()
        best_key = (data[best].blue_work, best)
        reach = self.orderer.ghostdag.reachability
        last_final = self.orderer.final[-1]
        chosen = [
            t
            for t in self.orderer.tips
            if reach.is_chain_ancestor(last_final, t) or (data[t].blue_work, t) < best_key
        ]
        chosen.sort(key=lambda t: (data[t].blue_work, t), reverse=True)
        return sorted(chosen[:MAX_PARENTS])

    def propose(self) -> dict[str, Any]:
        parents = self.parents()
        latest = max((self.orderer.timestamp_of(p) for p in parents), default=0)
        timestamp = max(int(time.time() * 1000), latest)
        txs = self.mempool.select(self.max_block_txs, MAX_BLOCK_BYTES)
        block = self.proposer.make_block(parents, timestamp, self.sequence, [t.raw for t in txs])
        self.producer.send(PROPOSED, block, key=self.address, timestamp_ms=timestamp).result(30)
        self.sequence += 1
        self.published += 1
        self.mempool.mark_included(txs)
        self._proposed.add(block["hash"])
        MEMPOOL_SIZE.set(len(self.mempool))
        log.info("block %s: %d parents, %d txs", block["hash"].hex()[:12], len(parents), len(txs))
        return block

    # -- the loop ----------------------------------------------------------------------

    def catch_up(self, reader: Reader) -> int:
        """Read the block topic to its end; returns the next offset."""
        ends = reader.end_offsets(PROPOSED.name)
        next_offset = 0
        if ends[0][1] > 0:
            for message in reader.read(
                {(PROPOSED.name, 0): 0}, until={(PROPOSED.name, 0): ends[0][1]}
            ):
                self.on_block(message)
                next_offset = message.offset() + 1
        return next_offset

    def run(self, stop: threading.Event) -> None:
        reader = Reader(self.bootstrap, client_id=f"proposer-{self.address[:10]}-blocks")
        txs = Consumer(
            client_config(
                self.bootstrap,
                {
                    "group.id": self.group_id,
                    "client.id": f"proposer-{self.address[:10]}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": True,
                    "session.timeout.ms": 10_000,
                    "heartbeat.interval.ms": 1_000,
                },
            )
        )
        try:
            reader.assign({(PROPOSED.name, 0): self.catch_up(reader)})
            txs.subscribe([TX_SUBMITTED.name])
            next_block = time.monotonic() + self.interval_s
            while not stop.is_set():
                for message in reader.poll_batch(500, 0):
                    if message.error() is None:
                        self.on_block(message)
                for message in txs.consume(500, 0.05):
                    error = message.error()
                    if error is None:
                        self.on_transaction(message.value())
                    elif error.code() != KafkaError._PARTITION_EOF:
                        log.warning("transaction consumer: %s", error.str())
                if time.monotonic() >= next_block:
                    self.propose()
                    next_block += self.interval_s
                    if next_block < time.monotonic():  # fell behind: do not burst
                        next_block = time.monotonic() + self.interval_s
        finally:
            txs.close()
            reader.close()
            self.producer.close()
