"""A block proposer: mempool in, signed blocks out.

Each proposer has its own secp256k1 key. Proposers share `lattice.tx.submitted` through one
consumer group (transactions are keyed by sender, so a sender's transactions reach one
proposer at a time, in nonce order). Every proposer also reads all of
`lattice.blocks.proposed` through its own `DagOrderer`, the same code on the same single
partition the DAG processor reads, so it knows the DAG tips and the final chain exactly as
the DAG processor will. Every `interval` (its `tick`) it proposes a block whose parents are
the tips it knows, less any tip that would make the block leave the final chain (Kaspa's
rule for block templates), with transactions from its mempool; then it drops them from the
mempool.

A transaction is safe only once a block carrying it is on the log: until the proposer reads
back its own block (or another's that includes it), the transaction's offset is held
(`processors.proposer.holds`), and the group resumes from the oldest held offset. A
proposer killed with transactions in its mempool or a block not yet acknowledged leaves
them to the member that takes its partitions next (itself, restarted).

Its state is in memory (`MemoryStore`): at start the runtime reads the whole block topic
before anything else (transactions already in blocks are known before the mempool fills,
and the group's transactions are read only once it has caught up), and the group's
committed offsets say where its share of the transactions resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from coincurve import PrivateKey
from eth_hash.auto import keccak

from processors.abc import Output, Pace, Partition, Processor, Subscription
from processors.dag.blocks import MAX_BLOCK_BYTES, MAX_PARENTS, Proposer, genesis_hash
from processors.dag.ordering import DagOrderer
from processors.execution.transactions import ChainRules, InvalidTransaction, decode_transaction
from processors.proposer.holds import Holds
from processors.proposer.mempool import Mempool
from processors.state import MemoryStore
from schemas.events import BlockProposed, TransactionSubmitted
from streams.kafka import Record
from streams.metrics import MEMPOOL_SIZE
from streams.topics import hex_key, topic

log = logging.getLogger(__name__)

TX_SUBMITTED = topic("tx.submitted")
PROPOSED = topic("blocks.proposed")


def devnet_key(index: int) -> PrivateKey:
    """The devnet's well-known proposer keys (public: for a development network only)."""
    return PrivateKey(keccak(b"lattice devnet proposer %d" % index))


class ProposerProcessor(Processor[MemoryStore]):
    role = "proposer"

    def __init__(
        self,
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
        self.proposer = Proposer(key)
        self.name = f"proposer-{self.address[:10]}"
        # Its inputs need not wait for the archive (`Pace.durable_inputs`): it stores no
        # position (the group's offsets, and a memory the log rebuilds); a transaction is
        # acknowledged to its sender only once durable, so one it reads earlier and puts in
        # a block was never promised to anyone; and a block lies after its parents on the
        # one partition of the block topic, so none that is on disk lacks a parent. Its
        # own blocks should come back at once: a block built before the last one was read
        # back is its sibling (`_carrier` keeps that from reordering nonces).
        self.pace = Pace(poll_s=0.05, tick_s=interval_s, durable_inputs=False)
        self.max_block_txs = max_block_txs
        self.group_id = group_id
        self.rules = rules or ChainRules(chain_id)
        self.orderer = DagOrderer(genesis_hash(chain_id), k=k, finality_depth=finality_depth)
        self.mempool = Mempool()
        self.holds = Holds()
        self.sequence = 0
        self.published = 0
        #: Blocks this process proposed and has not read back yet, with their transactions'
        #: hashes: reading one back needs no decoding of its transactions (each recovers a
        #: signature), and releases their holds.
        self._proposed: dict[bytes, list[bytes]] = {}
        #: Per sender, the latest block known to carry one of its transactions. A block
        #: takes a sender's transactions only if that block is in its past: GHOSTDAG orders
        #: a block after its past, but a sibling (this proposer's block not read back yet,
        #: or another's left out of the parents) may come first, and a later nonce
        #: executed before an earlier one is rejected for good.
        self._carrier: dict[bytes, bytes] = {}

    @property
    def address(self) -> str:
        return hex_key(self.proposer.address)

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(PROPOSED), Subscription(TX_SUBMITTED, group=self.group_id))

    def handle(self, record: Record[Any], state: MemoryStore) -> Sequence[Output]:
        event = record.event
        if isinstance(event, BlockProposed):
            self.on_block(record, event)
        elif isinstance(event, TransactionSubmitted):
            self.on_transaction(event, (record.topic, record.partition), record.offset)
        return ()

    def resume_from(self, partition: Partition, handled: int) -> int:
        """Not past a transaction that is not in a block on the log yet."""
        oldest = self.holds.oldest(partition)
        return handled + 1 if oldest is None else oldest

    # -- following the DAG -------------------------------------------------------------

    def on_block(self, record: Record[Any], block: BlockProposed) -> None:
        self.orderer.accept(block, record.position, record.timestamp_ms)
        self.orderer.rejected.clear()
        if block.proposer == self.proposer.address:
            self.sequence = max(self.sequence, block.sequence + 1)
        carried = self._proposed.pop(block.hash, None)
        if carried is not None:  # its transactions left the mempool at proposing
            self.holds.release(carried)
            return
        included = []
        for raw in block.transactions:
            try:
                included.append(decode_transaction(raw, self.rules))
            except InvalidTransaction:
                continue
        for tx in included:
            self._carrier[tx.sender] = block.hash
        self.holds.release(self.mempool.mark_included(included))

    # -- taking transactions -----------------------------------------------------------

    def on_transaction(
        self, submitted: TransactionSubmitted, partition: Partition, offset: int
    ) -> None:
        try:
            tx = decode_transaction(submitted.raw, self.rules)
        except InvalidTransaction as exc:
            log.warning("ignoring a submitted transaction: %s", exc)
            return
        before = self.mempool.waiting(tx.sender, tx.nonce)
        outcome = self.mempool.add(tx, submitted.account_nonce)
        if outcome in ("added", "replaced"):
            self.holds.hold(tx.hash, partition, offset)
            if before is not None and outcome == "replaced":
                self.holds.release([before.hash])
        else:
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

    def _unsettled(self, parents: list[bytes]) -> set[bytes]:
        """Senders whose latest carrying block would not be in the past of a block with
        these parents; forgets those whose carrier is final (in every later block's past:
        the selected tip is always a parent)."""
        reach = self.orderer.ghostdag.reachability
        final = self.orderer.final[-1]
        known = self.orderer.ghostdag.data
        unsettled = set()
        for sender, carrier in list(self._carrier.items()):
            if carrier in self._proposed:  # its own block, not read back yet
                unsettled.add(sender)
            elif carrier not in known or reach.is_dag_ancestor(carrier, final):
                del self._carrier[sender]  # pruned, or final
            elif not any(reach.is_dag_ancestor(carrier, p) for p in parents):
                unsettled.add(sender)
        return unsettled

    def tick(self, now_ms: int, state: MemoryStore) -> Sequence[Output]:
        """A block every interval (the runtime's timer), from the mempool's best."""
        block = self.propose(now_ms)
        return [Output(PROPOSED, block, key=self.address, timestamp_ms=block.timestamp_ms)]

    def propose(self, now_ms: int) -> BlockProposed:
        parents = self.parents()
        latest = max((self.orderer.timestamp_of(p) for p in parents), default=0)
        timestamp = max(now_ms, latest)
        unsettled = self._unsettled(parents)
        txs = self.mempool.select(self.max_block_txs, MAX_BLOCK_BYTES, skip=unsettled)
        block = self.proposer.make_block(parents, timestamp, self.sequence, [t.raw for t in txs])
        for tx in txs:
            self._carrier[tx.sender] = block.hash
        self.sequence += 1
        self.published += 1
        carried = [t.hash for t in txs]
        # The block's own transactions stay held until it is read back from the log.
        self.holds.release(set(self.mempool.mark_included(txs)).difference(carried))
        self._proposed[block.hash] = carried
        MEMPOOL_SIZE.set(len(self.mempool))
        log.info("block %s: %d parents, %d txs", block.hash.hex()[:12], len(parents), len(txs))
        return block
