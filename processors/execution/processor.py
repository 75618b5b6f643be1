"""The execution processor: `lattice.blocks.virtual` in; the optimistic head in its store;
executed blocks, receipts, account states and rejected transactions of final blocks out.

A thin shell around `Ledger`, run by `processors.runtime.Runtime`. Each change of the
virtual selected chain (`VirtualChainChanged`) drops the executed blocks above its fork
(`Ledger.rewind`) and executes the chain blocks it adds, so the store's canonical chain is
the optimistic head, about one block interval behind the DAG; py-evm's writes (prefixed
`evm/`) go into the store, which the runtime commits with the input offset in one synced
batch. A block's events are made when it is executed and kept beside it until the block is
final (`exec/outputs/<hash>`); then they are sent, with the replica's checkpoint, so the
output topics carry the final chain only, as `lattice.blocks.ordered` orders it, and a
block dropped by a reorganisation never reached them. A crash at any point resumes from the
last committed change: no transaction is applied twice or lost, and the state root at every
height is what an uninterrupted run computes.

Changes are numbered: one applied already (two writers send the same ones during a DAG
processor's takeover) is skipped. Outputs are receipts, rejections and accounts first and
the executed block last; the outbox sends each once. A publishing store lost and rebuilt
from the virtual topic does not publish again what the output topics hold
(`Pace.rebuild_window` covers the last records of each output partition). A replica that
does not publish sends only its checkpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import rlp
from coincurve import PrivateKey

from processors.abc import Output, Pace, Processor, Subscription
from processors.execution import snapshots
from processors.execution.checkpoints import sign_checkpoint
from processors.execution.db import OverlayDB, overlay_chain_db
from processors.execution.genesis import Genesis
from processors.execution.ledger import BlockResult, Ledger
from processors.execution.transactions import ChainRules
from processors.state import RocksStore
from schemas.codec import default_codec
from schemas.events import (
    AccountState,
    BlockExecuted,
    BlockOrdered,
    Position,
    TransactionRejected,
    VirtualChainChanged,
)
from schemas.record import Encoded
from streams.kafka import Record
from streams.metrics import BLOCK_EXECUTION_SECONDS, EVM_TRANSACTIONS
from streams.topics import TopicSpec, hex_key, topic

log = logging.getLogger(__name__)

ORDERED = topic("blocks.ordered")
VIRTUAL = topic("blocks.virtual")
EXECUTED = topic("blocks.executed")
RECEIPTS = topic("receipts")
ACCOUNTS = topic("state.accounts")
REJECTED = topic("tx.rejected")
CHECKPOINTS = topic("checkpoints")
EVM_PREFIX = b"evm/"
#: The last final block (number, 8 bytes, then hash); the last change applied (8 bytes);
#: + an executed block's hash: its events, sent once it is final.
FINAL = b"exec/final"
_APPLIED = b"exec/applied"
_OUTPUTS = b"exec/outputs/"
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
        return (Subscription(VIRTUAL),)

    def outputs(self) -> Sequence[TopicSpec]:
        return (RECEIPTS, REJECTED, ACCOUNTS, EXECUTED) if self.publish else ()

    def restore(self, state: RocksStore) -> None:
        """The ledger over the store; on a fresh store, the genesis (committed at once)."""
        db, self._overlay = overlay_chain_db(lambda key: state.get(EVM_PREFIX + key))
        self._ledger = Ledger(db, self.genesis, self.rules)
        self._move_writes(state)
        if state.get(FINAL) is None:
            # A fresh store: the genesis. A store from before optimistic execution held
            # final blocks only: its head.
            head = self._ledger.head
            state.put(FINAL, head.block_number.to_bytes(8, "big") + head.hash)

    def _move_writes(self, state: RocksStore) -> None:
        assert self._overlay is not None
        for key, value in self._overlay.take_changes().items():
            if value is None:
                state.delete(EVM_PREFIX + key)
            else:
                state.put(EVM_PREFIX + key, value)

    def handle(self, record: Record[Any], state: RocksStore) -> Sequence[Output]:
        change = record.event
        if not isinstance(change, VirtualChainChanged):
            log.warning("ignoring a %s on %s", change.SCHEMA, record.topic)
            return ()
        return self.apply(change, record.position, state)

    def apply(
        self, change: VirtualChainChanged, cause: Position, state: RocksStore
    ) -> list[Output]:
        """Follow one change of the virtual chain: drop, execute, and send what became final."""
        applied = _number(state.get(_APPLIED))
        if change.sequence <= applied:
            log.warning("skipping virtual chain change %d: %d applied", change.sequence, applied)
            return []
        final = self.final_number(state)
        # Blocks at or below the final one are final here already: an old store that
        # executed only final blocks reads the changes from the beginning and keeps them.
        keep = max(change.fork_index, final)
        added = [block for block in change.added if block.chain_index > keep]
        head = self.ledger.head.block_number
        _check(change, keep, head, added)
        if head > keep:
            self._drop(state, keep)
        for ordered in added:
            self._execute(ordered, cause, state)
        state.put(_APPLIED, change.sequence.to_bytes(8, "big"))
        outputs: list[Output] = []
        for number in range(final + 1, change.final_index + 1):
            outputs += self._finalise(number, cause, state)
        return outputs

    def final_number(self, state: RocksStore) -> int:
        """The last final block executed here."""
        return _number(state.get(FINAL))

    def _drop(self, state: RocksStore, keep: int) -> None:
        chaindb = self.ledger.chain.chaindb
        for number in range(keep + 1, self.ledger.head.block_number + 1):
            state.delete(_OUTPUTS + chaindb.get_canonical_block_hash(number))  # type: ignore[arg-type]
        log.info("reorganisation: blocks above %d dropped", keep)
        self.ledger.rewind(keep)
        self._move_writes(state)

    def _execute(self, ordered: BlockOrdered, cause: Position, state: RocksStore) -> None:
        started = time.perf_counter()
        assert self._overlay is not None
        try:
            result = self.ledger.execute(ordered)
        except Exception:
            self._overlay.discard_changes()
            raise
        self._move_writes(state)
        if self.publish:
            state.put(_OUTPUTS + result.header.hash, _pack(self.events(result, cause)))
        BLOCK_EXECUTION_SECONDS.observe(time.perf_counter() - started)
        if result.carried:
            number = result.header.block_number
            log.info("block %d full: %d transactions wait for the next", number, result.carried)
        EVM_TRANSACTIONS.labels("included").inc(len(result.included))
        EVM_TRANSACTIONS.labels("rejected").inc(len(result.rejected))

    def _finalise(self, number: int, cause: Position, state: RocksStore) -> list[Output]:
        """A block that became final: its events, its checkpoint, a snapshot when due."""
        header = self.ledger.chain.get_canonical_block_header_by_number(number)  # type: ignore[arg-type]
        outputs = []
        if self.publish:
            outputs = _unpack(state.get(_OUTPUTS + header.hash))
            state.delete(_OUTPUTS + header.hash)
        if self.checkpoint_key is not None and number % self.checkpoint_every == 0:
            checkpoint = sign_checkpoint(
                self.checkpoint_key, number, header.hash, header.state_root, self.name, cause
            )
            outputs.append(Output(CHECKPOINTS, checkpoint, key=str(number)))
        state.put(FINAL, number.to_bytes(8, "big") + header.hash)
        if self.snapshot_every and number % self.snapshot_every == 0:
            self._snapshot(state, number)
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


def final_changes(blocks: Iterable[BlockOrdered]) -> Iterator[VirtualChainChanged]:
    """A final chain (`lattice.blocks.ordered`) as changes of a virtual chain that only
    grew, each block final as it came: what a replay of the final chain applies."""
    for sequence, block in enumerate(blocks, 1):
        yield VirtualChainChanged(
            sequence=sequence,
            fork_index=block.chain_index - 1,
            added=(block,),
            final_index=block.chain_index,
            final_hash=block.hash,
            cause=block.cause,
        )


def _check(change: VirtualChainChanged, keep: int, head: int, added: list[BlockOrdered]) -> None:
    """A change that does not follow from the chain executed here cannot be applied: the
    log contradicts itself (or is not a DAG processor's)."""
    indexes = [block.chain_index for block in added]
    if keep > head or indexes != list(range(keep + 1, keep + 1 + len(indexes))):
        raise ValueError(
            f"virtual chain change {change.sequence} does not follow: the head here is "
            f"{head}, it keeps {keep} and adds chain blocks {indexes}"
        )
    if change.final_index > keep + len(indexes):
        raise ValueError(
            f"virtual chain change {change.sequence} makes {change.final_index} final, "
            f"above its tip {keep + len(indexes)}"
        )


def _number(value: bytes | None) -> int:
    return int.from_bytes(value[:8], "big") if value else 0


def _pack(outputs: list[Output]) -> bytes:
    codec = default_codec()
    packed = rlp.encode(
        [
            [
                o.topic.name.encode(),
                (o.key or "").encode(),
                b"" if o.timestamp_ms is None else o.timestamp_ms.to_bytes(8, "big"),
                codec.encode_event(o.event),
            ]
            for o in outputs
        ]
    )
    return bytes(packed)


def _unpack(packed: bytes | None) -> list[Output]:
    if packed is None:
        return []
    codec = default_codec()
    return [
        Output(
            topic(name.decode()),
            Encoded(codec.writer_of(value).name, value),
            key=key.decode() or None,
            timestamp_ms=int.from_bytes(stamp, "big") if stamp else None,
        )
        for name, key, stamp, value in rlp.decode(packed)
    ]
