"""A read-only view of the ledger for the gateway: the execution processor's own store.

The execution processor is the only writer of its RocksDB; the gateway opens the same
database as a RocksDB *secondary* instance (read-only, catching up with the primary on a
timer), so JSON-RPC reads see exactly the state execution committed, with no second copy to
keep in sync. py-evm runs on top of it for calls and gas estimates; whatever py-evm writes
while doing so lands in a throw-away overlay.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cachetools import LRUCache
from eth.abc import BlockAPI, BlockHeaderAPI, MessageAPI
from eth.chains.base import MiningChain
from eth.constants import CREATE_CONTRACT_ADDRESS, EMPTY_SHA3
from eth.vm.forks.prague.constants import SET_CODE_TRANSACTION_TYPE
from eth.vm.message import Message
from eth.vm.spoof import SpoofTransaction
from eth_typing import Address
from eth_utils import ValidationError  # type: ignore[attr-defined]
from rocksdict import AccessType, Options, Rdict

from processors.execution.db import overlay_chain_db
from processors.execution.ledger import Ledger
from processors.execution.processor import EVM_PREFIX, FINAL
from processors.execution.transactions import ChainRules
from processors.execution.vm import VM_CONFIGURATION

#: A call's account overrides (`gateway.ledger.Override`, by address).
Overrides = tuple[tuple[bytes, Any], ...]


class LedgerNotReady(RuntimeError):
    """The execution processor has not written the genesis yet."""


#: What the content-addressed cache may hold, counting each entry's overhead.
HASHED_CACHE_BYTES = 16 * 2**20
#: A cached entry's bytes beyond its value: the 32-byte key object, the cache's dicts
#: (values, sizes, LRU order) and the value's object header (~264, tracemalloc says).
ENTRY_OVERHEAD = 270


def _entry_size(value: bytes) -> int:
    return len(value) + ENTRY_OVERHEAD


class ChainView:
    def __init__(self, store_dir: Path, chain_id: int) -> None:
        self.store_path = store_dir / "rocksdb"
        self.chain_id = chain_id
        self._secondary_dir = Path(tempfile.mkdtemp(prefix="lattice-gateway-"))
        self._db: Rdict | None = None
        self._lock = threading.Lock()
        self._chain: MiningChain | None = None
        self._overlay: Any = None
        self._vm_at: tuple[bytes, Any] | None = None
        self._state_at: tuple[bytes, Any] | None = None
        self._primary_mark: tuple[tuple[str, int], ...] = ()
        #: A decoded block by hash is good forever (the last 64 kept); a number may name
        #: another block after a reorganisation of the optimistic head.
        self._blocks: LRUCache[bytes, BlockAPI] = LRUCache(64)
        #: 32-byte keys are content hashes (trie nodes, code, headers): a value found once
        #: is good forever. Bounded by bytes: every block makes new nodes along the paths
        #: it changed and strands the old ones, so a count bound fills with dead nodes of
        #: any size (200,000 of them grew the gateway ~3 MiB a minute through a 30-minute soak).
        self._hashed: LRUCache[bytes, bytes] = LRUCache(HASHED_CACHE_BYTES, getsizeof=_entry_size)

    def _open(self) -> Rdict:
        if self._db is None:
            if not (self.store_path / "CURRENT").exists():
                raise LedgerNotReady("the execution processor has not started yet")
            self._db = Rdict(
                str(self.store_path),
                options=Options(raw_mode=True),
                access_type=AccessType.secondary(str(self._secondary_dir)),
            )
        return self._db

    def refresh(self) -> bool:
        """See what the execution processor committed since the last refresh; True if
        anything was new.

        RocksDB's catch-up costs ~0.7 ms even when nothing changed, so it runs only when the
        primary's write-ahead logs or manifest changed size (a ~10 us directory scan): every
        commit appends to one of them. Cheap enough to check on every request, so a receipt
        is readable as soon as execution committed its block.
        """
        with self._lock:
            if self._db is None:
                return False
            try:
                mark = tuple(
                    sorted(
                        (entry.name, entry.stat().st_size)
                        for entry in os.scandir(self.store_path)
                        if entry.name.endswith(".log") or entry.name.startswith("MANIFEST")
                    )
                )
            except FileNotFoundError:  # a file rotated away mid-scan: just catch up
                mark = ()
            if mark and mark == self._primary_mark:
                return False
            self._db.try_catch_up_with_primary()
            self._primary_mark = mark
            return True

    def _read(self, key: bytes) -> bytes | None:
        # Misses are not cached: the node may be written later.
        cached = self._hashed.get(key)
        if cached is not None:
            return cached
        value = self._open().get(EVM_PREFIX + key)
        if value is None:
            return None
        found = bytes(value)
        if len(key) == 32:
            self._hashed[key] = found
        return found

    @property
    def chain(self) -> MiningChain:
        if self._chain is None:
            db, self._overlay = overlay_chain_db(self._read)
            chain_class = MiningChain.configure(
                __name__="LatticeView", vm_configuration=VM_CONFIGURATION, chain_id=self.chain_id
            )
            try:
                self._chain = chain_class(db)
            except Exception as exc:  # no canonical head stored yet
                raise LedgerNotReady("the ledger has no genesis yet") from exc
        self._overlay.discard_changes()
        return self._chain

    def head(self) -> BlockHeaderAPI:
        return self.chain.get_canonical_head()

    def header(self, number: int) -> BlockHeaderAPI:
        return self.chain.get_canonical_block_header_by_number(number)  # type: ignore[arg-type]

    def block(self, number: int) -> BlockAPI:
        return self.block_by_hash(self.canonical_hash(number))

    def canonical_hash(self, number: int) -> bytes:
        """The hash of the canonical block `number` (`HeaderNotFound` above the head)."""
        return bytes(self.chain.chaindb.get_canonical_block_hash(number))  # type: ignore[arg-type]

    def block_by_hash(self, block_hash: bytes) -> BlockAPI:
        """A block by hash: canonical, or one a reorganisation dropped (kept, as geth
        keeps side blocks)."""
        cached = self._blocks.get(block_hash)
        if cached is None:
            cached = self.chain.get_block_by_hash(block_hash)  # type: ignore[arg-type]
            self._blocks[block_hash] = cached
        return cached

    def scratch_ledger(self, rules: ChainRules) -> Ledger:
        """A ledger over what execution committed whose writes go nowhere (an overlay of
        its own): for building a block nobody keeps, such as the pending one."""
        db, _ = overlay_chain_db(self._read)
        return Ledger(db, None, rules)

    def final_number(self) -> int:
        """The last block execution holds final (`safe`): the optimistic head is above."""
        value = self._open().get(FINAL)
        return int.from_bytes(bytes(value)[:8], "big") if value is not None else 0

    def vm(self, header: BlockHeaderAPI) -> Any:
        """py-evm's VM at a block; the head's is cached until the head moves."""
        chain = self.chain
        if self._vm_at is not None and self._vm_at[0] == header.hash:
            return self._vm_at[1]
        vm = chain.get_vm(header)
        self._vm_at = (header.hash, vm)
        return vm

    @contextlib.contextmanager
    def costless_state(self, header: BlockHeaderAPI) -> Iterator[Any]:
        """A state on top of `header` for calls (py-evm's `in_costless_state`), everything
        written to it reverted on exit.

        One state per head, with the pending zero-base-fee header it needs, serves every
        call until the head moves: building them per call was ~60% of an `eth_call`, and a
        reused state keeps py-evm's decoded-account and storage caches warm. The revert
        undoes accounts, storage, warm sets and transient storage alike (py-evm journals
        them all).
        """
        if self._state_at is None or self._state_at[0] != header.hash:
            vm = self.vm(header)
            pending = vm.generate_block_from_parent_header_and_coinbase(header, header.coinbase)
            free = pending.header.copy(base_fee_per_gas=0)
            ancestors = itertools.chain((header.hash,), vm.previous_hashes)
            state = vm.build_state(vm.chaindb.db, free, vm.chain_context, ancestors)
            self._state_at = (header.hash, state)
        state = self._state_at[1]
        snapshot = state.snapshot()
        try:
            yield state
        finally:
            state.revert(snapshot)

    def call(self, header: BlockHeaderAPI, tx: Any, overrides: Overrides = ()) -> Any:
        """Run a zero-gas-price call on top of `header`, on a state with `overrides` made
        (reverted with the rest); the computation (output, error).

        py-evm's transaction executor minus its last step, the fee settlement (refunds,
        coinbase tip, touched-account cleanup): it changes nothing a call returns and is
        reverted anyway, and it was ~30% of a call's time.
        """
        with self.costless_state(header) as state:
            return _run(state, tx, overrides)

    def accessed(
        self, header: BlockHeaderAPI, tx: Any, overrides: Overrides = ()
    ) -> tuple[Any, list[bytes], list[tuple[bytes, int]]]:
        """Run a call as `call` does, noting every account and storage slot its code
        touches: every access asks py-evm whether its target is warm (the warming before
        the code runs, of the sender, recipient and precompiles, does not ask)."""
        with self.costless_state(header) as state:
            accounts: list[bytes] = []
            slots: list[tuple[bytes, int]] = []
            kind = type(state)

            def account_warm(address: Address) -> bool:
                accounts.append(bytes(address))
                return bool(kind.is_address_warm(state, address))

            def slot_warm(address: Address, slot: int) -> bool:
                slots.append((bytes(address), slot))
                return bool(kind.is_storage_warm(state, address, slot))

            state.is_address_warm, state.is_storage_warm = account_warm, slot_warm
            try:
                return _run(state, tx, overrides), accounts, slots
            finally:
                del state.is_address_warm, state.is_storage_warm

    def estimate_gas(self, header: BlockHeaderAPI, tx: Any, overrides: Overrides = ()) -> int:
        """The gas limit `tx` needs on top of `header` (`least_gas`); raises `CallFailed`
        when it fails even with all the gas it may have (`tx.gas`)."""

        def run(gas: int) -> Any:
            try:
                return self.call(header, SpoofTransaction(tx, gas=gas), overrides)
            except ValidationError:
                if gas == tx.gas:  # invalid whatever its gas: the caller says why
                    raise
                return None  # e.g. below EIP-7623's calldata floor

        return least_gas(run, tx.gas)

    def state(self, header: BlockHeaderAPI) -> Any:
        return self.vm(header).state

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        shutil.rmtree(self._secondary_dir, ignore_errors=True)


def _run(state: Any, tx: Any, overrides: Overrides) -> Any:
    for address, override in overrides:
        apply_override(state, address, override)
    executor = state.get_transaction_executor()
    executor.validate_transaction(tx)
    message = _call_message(state, executor, tx)
    return executor.build_computation(message, tx)


def apply_override(state: Any, address: bytes, override: Any) -> None:
    """Make one account of `state` what a call's override says."""
    who = Address(address)
    if override.balance is not None:
        state.set_balance(who, override.balance)
    if override.nonce is not None:
        state.set_nonce(who, override.nonce)
    if override.code is not None:
        state.set_code(who, override.code)
    if override.state is not None:
        state.delete_storage(who)
    for slot, value in (override.state or ()) + override.state_diff:
        state.set_storage(who, slot, value)


def _call_message(state: Any, executor: Any, tx: Any) -> MessageAPI:
    """The message py-evm's `build_evm_message` makes for a call, without its no-ops.

    At a gas price of zero, buying gas moves no wei, and the sender's nonce bump can be seen
    by nothing when the sender runs no code (no opcode reads another account's nonce; only
    a CREATE by the sender itself would use it): yet each rewrote and re-encoded the
    sender's account, and the message's debug line hex-encoded the whole contract, together
    a quarter of a plain `eth_call`. Creations, paid calls and senders with code (EIP-7702
    delegations) take py-evm's own path.
    """
    sender = tx.sender
    if (
        tx.to == CREATE_CONTRACT_ADDRESS
        or state.get_gas_price(tx)
        or tx.type_id == SET_CODE_TRANSACTION_TYPE
        or state.get_code_hash(sender) != EMPTY_SHA3
    ):
        return executor.build_evm_message(tx)  # type: ignore[no-any-return]
    code, delegation = executor.get_code_at_address(tx.to)
    return Message(
        gas=tx.gas - tx.intrinsic_gas,
        to=tx.to,
        sender=sender,
        value=tx.value,
        data=tx.data,
        code=code,
        is_delegation=delegation is not None,
    )


def gas_used(gas_limit: int, computation: Any) -> int:
    """What a transaction with `gas_limit` that ran `computation` is charged: intrinsic
    gas and execution, less the refund EIP-3529 allows (a fifth at most), raised to
    EIP-7623's calldata floor where py-evm's settlement worked one out (a call that stops
    before settling has none)."""
    used = gas_limit - int(computation.get_gas_remaining())
    used -= min(int(computation.get_gas_refund()), used // 5)
    return used + int(getattr(computation, "data_floor_gas", 0))


class CallFailed(Exception):
    """A call that fails with all the gas it may have; `computation` says how (None: the
    transaction is invalid at any gas)."""

    def __init__(self, computation: Any) -> None:
        super().__init__(str(computation.error) if computation is not None else "invalid")
        self.computation = computation


#: How close an estimate must come to the least gas that works, as geth's (1.5%).
ESTIMATE_TOLERANCE_PER_MILLE = 15
#: The 2300 gas a value-bearing CALL hands on, which some callees need left over.
CALL_STIPEND = 2300


def least_gas(run: Callable[[int], Any], cap: int) -> int:
    """The least gas limit with which `run(gas)` succeeds, within 1.5% above (geth's rule).

    `run` returns the computation at that limit, or None for one the transaction cannot
    have. The search is geth's with one step more: one run at the cap gives the gas
    actually used; most transactions succeed with exactly that (plain transfers, reads),
    which is tried first and then exact; others need more than they use (the 63/64 rule
    for nested calls, SSTORE's 2300-gas floor, refunds): geth's optimistic bound
    (used + refund + 2300) x 64/63 next, then bisection. Two to about eight runs, where
    py-evm's own estimator takes a dozen or more.
    """
    top = run(cap)
    if top is None or top.is_error:
        raise CallFailed(top)
    used = cap - int(top.get_gas_remaining())

    def works(gas: int) -> bool:
        computation = run(gas)
        return computation is not None and not computation.is_error

    if used >= cap or works(used):
        return min(used, cap)
    low, high = used, cap  # low fails, high works
    optimistic = (used + top.get_gas_refund() + CALL_STIPEND) * 64 // 63
    if optimistic < high:
        if works(optimistic):
            high = optimistic
        else:
            low = optimistic
    while high - low > 1 and (high - low) * 1000 > high * ESTIMATE_TOLERANCE_PER_MILLE:
        middle = min((low + high) // 2, 2 * low)  # most answers lie just above `used`
        if works(middle):
            high = middle
        else:
            low = middle
    return high
