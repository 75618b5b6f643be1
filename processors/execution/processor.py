"""The execution processor: `lattice.blocks.ordered` in; executed blocks, receipts, account
states and rejected transactions out.

A thin shell around `Ledger`, run by `processors.runtime.Runtime`: for each ordered chain
block it executes the EVM block and moves py-evm's writes (prefixed `evm/`) into the store,
which the runtime commits with the input offset and the block's events in one synced batch.
A crash at any point resumes from the last committed block: no transaction is applied twice
or lost, and the state root at every height is what an uninterrupted run computes.

Outputs are receipts, rejections and accounts first and the executed block last; the outbox
sends each once. A publishing store lost and rebuilt from the ordered topic does not publish
again what the output topics hold (`Pace.rebuild_window` covers the last records of each
output partition). A replica that does not publish sends only its checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from coincurve import PrivateKey

from processors.abc import Output, Pace, Processor, Subscription
from processors.execution import snapshots
from processors.execution.checkpoints import sign_checkpoint
from processors.execution.db import OverlayDB, overlay_chain_db
from processors.execution.genesis import Genesis
from processors.execution.ledger import BlockResult, Ledger
from processors.execution.transactions import ChainRules
from processors.state import RocksStore
from schemas.events import AccountState, BlockExecuted, BlockOrdered, Position, TransactionRejected
from streams.kafka import Record
from streams.metrics import BLOCK_EXECUTION_SECONDS, EVM_TRANSACTIONS
from streams.topics import TopicSpec, hex_key, topic

log = logging.getLogger(__name__)

ORDERED = topic("blocks.ordered")
EXECUTED = topic("blocks.executed")
RECEIPTS = topic("receipts")
ACCOUNTS = topic("state.accounts")
REJECTED = topic("tx.rejected")
CHECKPOINTS = topic("checkpoints")
EVM_PREFIX = b"evm/"
#: How far back a rebuilt store looks for its outputs: well over a block's records.
REBUILD_WINDOW = 20_000
BLOCKS_PER_COMMIT = 16


class ExecutionProcessor(Processor[RocksStore]):
    role = "execution"

    def __init__(
        self,
        genesis: Genesis,
        rules: ChainRules,
        *,
        name: str = "lattice-execution",
        publish: bool = True,
        checkpoint_key: PrivateKey | None = None,
        checkpoint_every: int = 4,
        snapshot_every: int = 0,
    ) -> None:
        """`snapshot_every`: blocks between the state snapshots kept for joining nodes
        (`processors.execution.snapshots`; 0: none)."""
        self.name = name
        self.genesis = genesis
        self.rules = rules
        #: A replica that does not publish sends only its checkpoints.
        self.publish = publish
        self.checkpoint_key = checkpoint_key
        self.checkpoint_every = checkpoint_every
        self.snapshot_every = snapshot_every
        # A few blocks per commit: catching up commits (and publishes) as it goes rather
        # than after a whole poll's worth of blocks.
        self.pace = Pace(batch=BLOCKS_PER_COMMIT, rebuild_window=REBUILD_WINDOW if publish else 0)
        self._ledger: Ledger | None = None
        self._overlay: OverlayDB | None = None

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("the execution processor is not restored yet")
        return self._ledger

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(ORDERED),)

    def outputs(self) -> Sequence[TopicSpec]:
        return (RECEIPTS, REJECTED, ACCOUNTS, EXECUTED) if self.publish else ()

    def restore(self, state: RocksStore) -> None:
        """The ledger over the store; on a fresh store, the genesis (committed at once)."""
        db, self._overlay = overlay_chain_db(lambda key: state.get(EVM_PREFIX + key))
        self._ledger = Ledger(db, self.genesis, self.rules)
        self._move_writes(state)

    def _move_writes(self, state: RocksStore) -> None:
        assert self._overlay is not None
        for key, value in self._overlay.take_changes().items():
            if value is None:
                state.delete(EVM_PREFIX + key)
            else:
                state.put(EVM_PREFIX + key, value)

    def handle(self, record: Record[Any], state: RocksStore) -> Sequence[Output]:
        ordered = record.event
        if not isinstance(ordered, BlockOrdered):
            log.warning("ignoring a %s on %s", ordered.SCHEMA, record.topic)
            return ()
        head = self.ledger.head.block_number
        if ordered.chain_index <= head:
            # Each chain block is one EVM block: one already executed arrives again only
            # when two writers sent it (a standby's takeover racing a cut-off active).
            log.warning(
                "skipping chain block %d at %s[%d]@%d: block %d is already executed",
                ordered.chain_index,
                record.topic,
                record.partition,
                record.offset,
                head,
            )
            return ()
        started = time.perf_counter()
        assert self._overlay is not None
        try:
            result = self.ledger.execute(ordered)
        except Exception:
            self._overlay.discard_changes()
            raise
        self._move_writes(state)
        cause = record.position
        outputs = self.events(result, cause) if self.publish else []
        number = result.header.block_number
        if self.checkpoint_key is not None and number % self.checkpoint_every == 0:
            header = result.header
            checkpoint = sign_checkpoint(
                self.checkpoint_key, number, header.hash, header.state_root, self.name, cause
            )
            outputs.append(Output(CHECKPOINTS, checkpoint, key=str(number)))
        if self.snapshot_every and number % self.snapshot_every == 0:
            self._snapshot(state, number)
        BLOCK_EXECUTION_SECONDS.observe(time.perf_counter() - started)
        if result.carried:
            log.info("block %d full: %d transactions wait for the next", number, result.carried)
        EVM_TRANSACTIONS.labels("included").inc(len(result.included))
        EVM_TRANSACTIONS.labels("rejected").inc(len(result.rejected))
        return outputs

    def _snapshot(self, state: RocksStore, number: int) -> None:
        """Copy what is committed (the blocks before this one) for joining nodes. A copy
        is a service to others: failing to make one stops nothing here."""
        try:
            snapshots.take(state, number)
        except Exception as exc:  # RocksDB raises bare exceptions
            log.error("no state snapshot at block %d: %s", number, exc)

    def events(self, result: BlockResult, cause: Position) -> list[Output]:
        """A block's events: receipts, rejections, touched accounts, then the block."""
        header = result.header
        number = header.block_number
        outputs = [
            Output(RECEIPTS, r.event(cause), key=hex_key(r.transaction_hash))
            for r in result.receipts
        ]
        for r in result.rejected:
            rejected = TransactionRejected(
                hash=r.hash,
                sender=r.sender,
                nonce=r.nonce,
                block_number=number,
                dag_block=r.dag_block,
                code=r.code,
                reason=r.reason,
                cause=cause,
            )
            outputs.append(Output(REJECTED, rejected, key=hex_key(r.hash)))
        for address in result.touched:
            account = self.ledger.account(address)
            state = AccountState(
                address=address,
                balance=account.balance,
                nonce=account.nonce,
                code_hash=account.code_hash,
                storage_root=account.storage_root,
                block_number=number,
                cause=cause,
            )
            outputs.append(Output(ACCOUNTS, state, key=hex_key(address)))
        executed = BlockExecuted(
            number=number,
            hash=header.hash,
            parent_hash=header.parent_hash,
            dag_block=result.dag_block,
            state_root=header.state_root,
            receipts_root=header.receipt_root,
            transactions_root=header.transaction_root,
            logs_bloom=header.bloom.to_bytes(256, "big"),
            gas_used=header.gas_used,
            gas_limit=header.gas_limit,
            base_fee_per_gas=header.base_fee_per_gas or 0,
            timestamp=header.timestamp,
            fee_recipient=header.coinbase,
            transaction_hashes=tuple(i.tx.hash for i in result.included),
            rejected_count=len(result.rejected),
            cause=cause,
        )
        outputs.append(Output(EXECUTED, executed, timestamp_ms=header.timestamp * 1000))
        return outputs
