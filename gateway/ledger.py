"""Typed ledger queries over the chain view: blocks, transactions, receipts, state, calls,
fees and logs, as Python values. JSON-RPC (`gateway.jsonrpc`), the REST mirrors, WebSocket
subscriptions and the market all ask through this layer; none of them formats for another.

Block references: `latest` and `pending` are the optimistic head, the virtual selected
chain as execution has run it (a reorganisation can replace its newest blocks); `safe` is
the last block of the final DAG chain; `finalized` is the highest height a majority of
execution replicas signed alike (`gateway.checkpointview`), never above `safe`;
`earliest` is 0; a number names the canonical block at that height, a hash any block
executed (one a reorganisation dropped included, as geth keeps side blocks).

An executed block never changes (a reorganisation makes another block at its height, with
another hash), so what is computed from one is remembered by its hash (bounded): its
receipts, its RLP size, and the outcome of a call on it (dapps poll the same
`balanceOf`/`allowance`/`getReserves` every block).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import rlp
from cachetools import LRUCache
from eth.abc import BlockAPI, BlockHeaderAPI
from eth.exceptions import OutOfGas, Revert
from eth.vm.spoof import SpoofTransaction
from eth_bloom import BloomFilter  # type: ignore[attr-defined]
from eth_typing import Address
from eth_utils.exceptions import ValidationError

from gateway.chainview import CallFailed, ChainView, LedgerNotReady, gas_used
from gateway.checkpointview import CheckpointView
from gateway.stateproofs import AccountProof, prove
from processors.execution.receipts import BlockReceipt, ReceiptSource, block_receipts
from processors.execution.transactions import ChainRules, Transaction
from schemas.events import BlockOrdered, Log, OrderedTransaction, Position

Tag = Literal["latest", "pending", "safe", "finalized", "earliest"]
TAGS: tuple[Tag, ...] = ("latest", "pending", "safe", "finalized", "earliest")
#: A block: a tag, a number, or a 32-byte hash.
BlockRef = Tag | int | bytes
ErrorKind = Literal[
    "not_found", "beyond_head", "bad_request", "invalid", "reverted", "out_of_gas", "limit"
]
#: Calls and gas estimates remembered (by block and call), each outcome at most this big.
CALL_CACHE_SIZE = 4096
CALL_CACHE_MAX_RESULT = 2048
#: The tip every quote suggests (proposers order by it; the base fee is burnt).
SUGGESTED_TIP = 10**9


class QueryError(Exception):
    """A query the ledger cannot answer as asked; `kind` says how (geth's messages)."""

    def __init__(self, kind: ErrorKind, message: str, data: bytes | None = None) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.data = data


@dataclass(frozen=True)
class Override:
    """What a call pretends of an account (geth's state override set): its balance,
    nonce or code, and its whole storage (`state`) or some slots of it (`state_diff`)."""

    balance: int | None = None
    nonce: int | None = None
    code: bytes | None = None
    state: tuple[tuple[int, int], ...] | None = None
    state_diff: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Call:
    """A message to run against a block's state (`eth_call`, `eth_estimateGas`), with the
    accounts it overrides."""

    sender: bytes | None = None
    to: bytes | None = None
    gas: int | None = None
    value: int = 0
    data: bytes = b""
    overrides: tuple[tuple[bytes, Override], ...] = ()


@dataclass(frozen=True)
class LogCriteria:
    """Which logs a query wants: any of `addresses` (empty: any), and per topic position
    any of its options (None: any)."""

    addresses: tuple[bytes, ...] = ()
    topics: tuple[tuple[bytes, ...] | None, ...] = ()
    block_hash: bytes | None = None
    from_block: BlockRef = "latest"
    to_block: BlockRef = "latest"

    def may_match(self, bloom: int) -> bool:
        """Whether a block's bloom admits a match (no false negatives)."""
        bits = BloomFilter(bloom)
        if self.addresses and not any(a in bits for a in self.addresses):
            return False
        return all(any(t in bits for t in options) for options in self.topics if options)

    def matches(self, entry: Log) -> bool:
        if self.addresses and entry.address not in self.addresses:
            return False
        for i, options in enumerate(self.topics):
            if options and (i >= len(entry.topics) or entry.topics[i] not in options):
                return False
        return True


@dataclass(frozen=True)
class FeeHistory:
    oldest: int
    base_fees: tuple[int, ...]  # one per block, and the next block's
    gas_used_ratios: tuple[float, ...]
    rewards: tuple[tuple[int, ...], ...]


#: An access list: accounts with the storage slots of each, in the order first touched.
AccessEntries = tuple[tuple[bytes, tuple[int, ...]], ...]
#: Rounds of `access_list` before settling (geth loops until stable; lists settle in two).
ACCESS_LIST_ROUNDS = 10
#: The precompiled contracts of py-evm's Prague: 0x01 to 0x11.
PRECOMPILES = frozenset(n.to_bytes(20, "big") for n in range(1, 0x12))


@dataclass(frozen=True)
class AccessListResult:
    entries: AccessEntries
    gas_used: int
    error: str | None


def _entries(
    accounts: Sequence[bytes], slots: Sequence[tuple[bytes, int]], excluded: set[Any]
) -> AccessEntries:
    found: dict[bytes, dict[int, None]] = {}
    for address in accounts:
        if address not in excluded:
            found.setdefault(address, {})
    for address, slot in slots:
        found.setdefault(address, {})[slot] = None  # a recipient's slots are listed too
    return tuple((address, tuple(keys)) for address, keys in found.items())


#: A log found by a query: its receipt and its index among the receipt's logs.
FoundLog = tuple[BlockReceipt, int]
_Outcome = bytes | int | tuple[ErrorKind, str, bytes | None]


class LedgerQueries:
    def __init__(
        self,
        view: ChainView,
        *,
        block_gas_limit: int,
        checkpoints: CheckpointView | None = None,
        max_log_range: int = 10_000,
        max_log_results: int = 10_000,
    ) -> None:
        """`max_log_range`, `max_log_results`: the most blocks a log query may span and
        logs it may return (0: no limit; `Settings`)."""
        self.view = view
        self.block_gas_limit = block_gas_limit
        self.max_log_range = max_log_range
        self.max_log_results = max_log_results
        self.checkpoints = checkpoints
        self._receipts: LRUCache[bytes, tuple[BlockReceipt, ...]] = LRUCache(256)
        self._sizes: LRUCache[bytes, int] = LRUCache(256)
        self._calls: LRUCache[tuple[bytes, str, Call], _Outcome] = LRUCache(CALL_CACHE_SIZE)
        self._pending: tuple[tuple[bytes, ...], BlockAPI] | None = None

    # -- blocks ----------------------------------------------------------------------------

    def head(self) -> BlockHeaderAPI:
        return self.view.head()

    def header(self, ref: BlockRef) -> BlockHeaderAPI:
        """The header a reference names; `QueryError` when there is none."""
        head = self.view.head()
        if isinstance(ref, bytes):
            return self.block_by_hash(ref).header
        if ref in ("safe", "finalized"):
            final = min(self.view.final_number(), head.block_number)
            if ref == "finalized" and self.checkpoints is not None:
                final = min(final, self.checkpoints.finalized())
            return self.view.header(final)
        if ref in ("latest", "pending"):
            return head
        number = 0 if ref == "earliest" else int(ref)
        if number > head.block_number:
            raise QueryError("beyond_head", f"header not found: block {number} is beyond the head")
        return self.view.header(number)

    def block(self, ref: BlockRef) -> BlockAPI:
        if isinstance(ref, bytes):
            return self.block_by_hash(ref)
        return self.view.block(self.header(ref).block_number)

    def block_by_hash(self, block_hash: bytes) -> BlockAPI:
        try:
            return self.view.block_by_hash(block_hash)
        except Exception:
            raise QueryError("not_found", "block not found") from None

    def block_size(self, block: BlockAPI) -> int:
        """The block's RLP size in bytes (header, transactions, uncles, withdrawals), as
        geth reports it."""
        key = block.header.hash
        size = self._sizes.get(key)
        if size is None:
            size = self._sizes[key] = len(rlp.encode(block))
        return size

    def receipts(self, block: BlockAPI) -> tuple[BlockReceipt, ...]:
        """The receipts of an executed block (`processors.execution.receipts`)."""
        key = block.header.hash
        found = self._receipts.get(key)
        if found is None:
            header = block.header
            sources = [_source(tx) for tx in block.transactions]
            receipts = block.get_receipts(self.view.chain.chaindb)
            base_fee = header.base_fee_per_gas or 0
            found = block_receipts(header.block_number, header.hash, base_fee, sources, receipts)
            self._receipts[key] = found
        return found

    def locate(self, tx_hash: bytes) -> tuple[BlockAPI, int] | None:
        """(block, index) of an executed transaction, or None."""
        try:
            number, index = self.view.chain.chaindb.get_transaction_index(tx_hash)  # type: ignore[arg-type]
        except Exception:
            return None
        return self.view.block(number), index

    def receipt(self, tx_hash: bytes) -> BlockReceipt | None:
        found = self.locate(tx_hash)
        if found is None:
            return None
        block, index = found
        return self.receipts(block)[index]

    def decoded(self, tx: Transaction) -> Any:
        """py-evm's object for a transaction no block holds (its sender known already)."""
        evm_tx = self.view.vm(self.head()).get_transaction_builder().decode(tx.raw)
        evm_tx.__dict__["sender"] = tx.sender
        return evm_tx

    def pending_block(self, txs: Sequence[Transaction]) -> BlockAPI:
        """The block the pending transactions would make on the head now (executed on a
        scratch copy, kept nowhere; those the state refuses are left out), remembered
        until the head or the transactions change."""
        head = self.head()
        key = (head.hash, *(tx.hash for tx in txs))
        if self._pending is not None and self._pending[0] == key:
            return self._pending[1]
        rules = ChainRules(self.view.chain_id, block_gas_limit=self.block_gas_limit)
        ledger = self.view.scratch_ledger(rules)
        stamp = max(head.timestamp, int(time.time())) * 1000
        ordered = BlockOrdered(
            chain_index=head.block_number + 1,
            hash=bytes(32),
            blue_score=0,
            blue_work=0,
            timestamp_ms=stamp,
            proposer=head.coinbase,
            mergeset_blues=(),
            mergeset_reds=(),
            transactions=tuple(
                OrderedTransaction(hash=tx.hash, raw=tx.raw, dag_block=bytes(32), index_in_block=i)
                for i, tx in enumerate(txs)
            ),
            cause=Position(topic="pending", partition=0, offset=0),
        )
        built = ledger.execute(ordered)
        block = ledger.chain.get_block_by_hash(built.header.hash)
        self._pending = (key, block)
        return block

    # -- state -----------------------------------------------------------------------------

    def _state(self, ref: BlockRef) -> Any:
        return self.view.state(self.header(ref))

    def proof(self, who: bytes, slots: Sequence[int], ref: BlockRef = "latest") -> AccountProof:
        """EIP-1186: the account and slots with their Merkle proofs at a block."""
        header = self.header(ref)
        return prove(self.view.chain.chaindb.db, header.state_root, who, slots)

    def balance(self, who: bytes, ref: BlockRef = "latest") -> int:
        return int(self._state(ref).get_balance(Address(who)))

    def nonce(self, who: bytes, ref: BlockRef = "latest") -> int:
        return int(self._state(ref).get_nonce(Address(who)))

    def code(self, who: bytes, ref: BlockRef = "latest") -> bytes:
        return bytes(self._state(ref).get_code(Address(who)))

    def storage(self, who: bytes, slot: int, ref: BlockRef = "latest") -> int:
        return int(self._state(ref).get_storage(Address(who), slot))

    # -- calls -----------------------------------------------------------------------------

    def call(self, call: Call, ref: BlockRef = "latest") -> bytes:
        """The output of `call` on the block; `QueryError` (reverted, with its data, or
        invalid) when it fails."""
        outcome = self._remembered("call", call, ref, self._run_call)
        assert isinstance(outcome, bytes)
        return outcome

    def estimate_gas(self, call: Call, ref: BlockRef = "latest") -> int:
        """The least gas `call` needs on the block (geth's search, `least_gas`)."""
        outcome = self._remembered("estimate", call, ref, self._run_estimate)
        assert isinstance(outcome, int)
        return outcome

    def _remembered(
        self,
        kind: str,
        call: Call,
        ref: BlockRef,
        run: Callable[[BlockHeaderAPI, Call], _Outcome],
    ) -> bytes | int:
        """`run(header, call)`'s outcome, remembered by block and call: a call's outcome is
        a function of the block it runs on and its fields alone."""
        header = self.header(ref)
        key = (header.hash, kind, call)
        outcome = self._calls.get(key)
        if outcome is None:
            outcome = run(header, call)
            size = len(outcome) if isinstance(outcome, bytes) else len(str(outcome))
            if size <= CALL_CACHE_MAX_RESULT:  # small outcomes only: bounded memory
                self._calls[key] = outcome
        if isinstance(outcome, tuple):  # a fresh exception each time: a raised one keeps frames
            raise QueryError(*outcome)
        return outcome

    def spoof(
        self, call: Call, header: BlockHeaderAPI, access: AccessEntries | None = None
    ) -> SpoofTransaction:
        """The call as an unsigned transaction from its sender (with an access list: an
        EIP-2930 one)."""
        sender = call.sender or b"\0" * 20
        vm = self.view.vm(header)
        nonce = dict(call.overrides).get(sender, Override()).nonce
        fields = {
            "nonce": vm.state.get_nonce(Address(sender)) if nonce is None else nonce,
            "gas_price": 0,
            "gas": call.gas if call.gas is not None else self.block_gas_limit,
            "to": Address(call.to or b""),
            "value": call.value,
            "data": call.data,
        }
        if access is None:
            unsigned = vm.create_unsigned_transaction(**fields)
        else:
            builder = vm.get_transaction_builder()
            listed = [(Address(a), list(slots)) for a, slots in access]
            unsigned = builder.new_unsigned_access_list_transaction(
                self.view.chain_id, access_list=listed, **fields
            )
        return SpoofTransaction(unsigned, from_=sender)

    def access_list(self, call: Call, ref: BlockRef = "latest") -> AccessListResult:
        """geth's `eth_createAccessList`: the accounts and slots the call's code touches
        (not its sender, recipient or the precompiles), found again with the list given
        until it stops changing, and the gas the call uses with it."""
        header = self.header(ref)
        excluded = {call.sender or b"\0" * 20, call.to, *PRECOMPILES}
        access: AccessEntries = ()
        for _ in range(ACCESS_LIST_ROUNDS):
            tx = self.spoof(call, header, access)
            try:
                computation, accounts, slots = self.view.accessed(header, tx, call.overrides)
            except ValidationError as exc:
                raise QueryError("invalid", f"invalid call: {exc}") from None
            if call.to is None:
                excluded.add(bytes(computation.msg.storage_address))
            found = _entries(accounts, slots, excluded)
            if found == access:
                break
            access = found
        used = gas_used(tx.gas, computation)
        error = None
        if computation.is_error:
            error = "execution reverted" + revert_reason(computation.output)
        return AccessListResult(access, used, error)

    def _run_call(self, header: BlockHeaderAPI, call: Call) -> _Outcome:
        tx = self.spoof(call, header)
        try:
            computation = self.view.call(header, tx, call.overrides)
        except ValidationError as exc:  # a value above the sender's balance, gas too low
            return "invalid", f"invalid call: {exc}", None
        if computation.is_error:
            output = computation.output
            return "reverted", "execution reverted" + revert_reason(output), output
        return bytes(computation.output)

    def _run_estimate(self, header: BlockHeaderAPI, call: Call) -> _Outcome:
        tx = self.spoof(call, header)
        try:
            return self.view.estimate_gas(header, tx, call.overrides)
        except ValidationError as exc:  # a value above the sender's balance
            return "invalid", f"invalid call: {exc}", None
        except CallFailed as failed:
            error = failed.computation.error if failed.computation is not None else None
            if isinstance(error, Revert):
                output = failed.computation.output
                return "reverted", "execution reverted" + revert_reason(output), output
            if isinstance(error, OutOfGas):
                return "out_of_gas", f"gas required exceeds allowance ({tx.gas})", None
            return "invalid", f"execution failed: {error or 'invalid call'}", None

    # -- fees ------------------------------------------------------------------------------

    def next_base_fee(self) -> int:
        child = self.view.chain.create_header_from_parent(self.view.head())
        return int(child.base_fee_per_gas or 0)

    def blob_base_fee(self) -> int:
        """The next block's blob base fee (EIP-4844's, from the head's excess blob gas)."""
        with self.view.costless_state(self.head()) as state:
            return int(state.blob_base_fee)

    def gas_price(self) -> int:
        return self.next_base_fee() + SUGGESTED_TIP

    def fee_history(self, count: int, newest: BlockRef, percentiles: int) -> FeeHistory:
        last = self.header(newest).block_number
        count = max(1, min(count, 1024, last + 1))
        oldest = last - count + 1
        headers = [self.view.header(n) for n in range(oldest, last + 1)]
        return FeeHistory(
            oldest=oldest,
            base_fees=(*(h.base_fee_per_gas or 0 for h in headers), self.next_base_fee()),
            gas_used_ratios=tuple(h.gas_used / h.gas_limit for h in headers),
            rewards=tuple(tuple(SUGGESTED_TIP for _ in range(percentiles)) for _ in headers),
        )

    # -- logs ------------------------------------------------------------------------------

    def log_range(self, criteria: LogCriteria) -> tuple[int, int]:
        if criteria.block_hash is not None:
            number = self.block_by_hash(criteria.block_hash).header.block_number
            return number, number
        first = self.header(criteria.from_block).block_number
        last = self.header(criteria.to_block).block_number
        if first > last:
            raise QueryError("bad_request", "fromBlock is after toBlock")
        return first, last

    def logs(
        self, criteria: LogCriteria, first: int, last: int, *, limited: bool = True
    ) -> list[FoundLog]:
        """The matching logs of blocks `first` to `last`; QueryError "limit" (geth's
        words) over the range or result limit. Not `limited`: a subscription's news of
        the latest blocks, which no client could narrow."""
        span, most = (self.max_log_range, self.max_log_results) if limited else (0, 0)
        if span and last - first + 1 > span:
            message = f"block range too large: {last - first + 1} blocks, the limit is {span}"
            raise QueryError("limit", message)
        found: list[FoundLog] = []
        for number in range(first, last + 1):
            header = self.view.header(number)
            if not criteria.may_match(header.bloom):
                continue
            for receipt in self.receipts(self.view.block(number)):
                found.extend(
                    (receipt, i) for i, e in enumerate(receipt.logs) if criteria.matches(e)
                )
            if most and len(found) > most:
                message = f"query returned more than {most} results; narrow the block range"
                raise QueryError("limit", message)
        return found

    # -- finality --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Head (None before genesis is executed), finality and replica agreement, for
        operators: it answers while the ledger is starting, which is when they ask."""
        try:
            head: int | None = self.view.head().block_number
        except LedgerNotReady:
            head = None
        status: dict[str, Any] = {"head": head}
        if self.checkpoints is not None:
            status["checkpoints"] = self.checkpoints.status()
        return status


def _source(tx: Any) -> ReceiptSource:
    """What a receipt needs of one of py-evm's transactions (its caps: for a legacy one
    py-evm gives the gas price as both)."""
    kind = getattr(tx, "type_id", None) or 0
    return ReceiptSource(
        tx.hash,
        bytes(tx.sender),
        tx.to or None,
        tx.nonce,
        kind,
        tx.max_fee_per_gas,
        tx.max_priority_fee_per_gas,
    )


def revert_reason(output: bytes) -> str:
    """`: <reason>` of an `Error(string)` revert (selector 0x08c379a0), else nothing."""
    if output[:4] == bytes.fromhex("08c379a0") and len(output) >= 68:
        length = int.from_bytes(output[36:68], "big")
        return ": " + output[68 : 68 + length].decode(errors="replace")
    return ""
