"""Transaction traces as geth's `debug_trace*` methods give them: the struct logger (every
opcode with its gas, stack, memory and storage), `callTracer` (the tree of calls) and
`prestateTracer` (the accounts and slots a transaction touched, as they were before it).

A trace runs the transaction again in py-evm on a scratch copy of the chain
(`ChainView.scratch_ledger`): its block's earlier transactions first, then it, with a
computation class whose opcode loop reports to a `Tracer`. The loop is py-evm's own
(`BaseComputation.apply_computation`) with the reports added; py-evm has no hooks.

Gas as geth and anvil count it: an opcode's `gasCost` is what it took from its frame, so a
call's includes the gas it handed on (read when the callee starts); in a call trace the
top frame's `gas` is what was left after the intrinsic gas and its `gasUsed` the
receipt's (intrinsic gas and refunds included).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth.abc import BlockAPI, BlockHeaderAPI
from eth.db.account import AccountDB
from eth.exceptions import Halt
from eth_typing import Address, Hash32

from gateway.chainview import gas_used
from gateway.formats import BadParam

#: Tracers by name (the struct logger is the default: no name).
TRACERS = ("callTracer", "prestateTracer")
_SLOAD, _SSTORE = 0x54, 0x55
#: Opcodes whose top stack word is an account they read (for the prestate).
_ACCOUNT_READS = {0x31, 0x3B, 0x3C, 0x3F, 0xFF}  # BALANCE, EXTCODE*, SELFDESTRUCT

_ACTIVE: contextvars.ContextVar[Tracer | None] = contextvars.ContextVar("tracer", default=None)


@dataclass(frozen=True)
class TraceConfig:
    """geth's trace options: a tracer (None: the struct logger) and its settings."""

    tracer: str | None = None
    disable_stack: bool = False
    disable_storage: bool = False
    enable_memory: bool = False
    only_top_call: bool = False
    diff_mode: bool = False

    @classmethod
    def of(cls, spec: Any) -> TraceConfig:
        if spec is None:
            return cls()
        if not isinstance(spec, dict):
            raise BadParam("trace options: expected an object")
        tracer = spec.get("tracer")
        if tracer is not None and tracer not in TRACERS:
            raise BadParam(f"tracer {tracer!r} not found (known: {', '.join(TRACERS)})")
        settings = spec.get("tracerConfig") or {}
        if not isinstance(settings, dict):
            raise BadParam("tracerConfig: expected an object")
        return cls(
            tracer=tracer,
            disable_stack=bool(spec.get("disableStack", False)),
            disable_storage=bool(spec.get("disableStorage", False)),
            enable_memory=bool(spec.get("enableMemory", False)),
            only_top_call=bool(settings.get("onlyTopCall", False)),
            diff_mode=bool(settings.get("diffMode", False)),
        )


@dataclass
class _Step:
    entry: dict[str, Any]
    gas: int
    computation: Any


@dataclass
class Tracer:
    """What one transaction did, as the opcode loop reports it."""

    config: TraceConfig
    logs: list[dict[str, Any]] = field(default_factory=list)
    #: The call-family opcode that made each child computation (geth's types), by child.
    kinds: dict[int, str] = field(default_factory=dict)
    accounts: dict[bytes, None] = field(default_factory=dict)
    slots: dict[bytes, dict[int, None]] = field(default_factory=dict)
    #: The accounts the transaction's creations made.
    created: dict[bytes, None] = field(default_factory=dict)
    _open: list[_Step] = field(default_factory=list)
    _storage: dict[bytes, dict[int, int]] = field(default_factory=dict)

    def frame_started(self, computation: Any) -> None:
        msg = computation.msg
        for address in (msg.sender, msg.storage_address, msg.code_address):
            if address:  # a creation's code address is empty
                self.accounts.setdefault(bytes(address))
        if msg.is_create:
            self.created.setdefault(bytes(msg.storage_address))
        if self._open:  # a call's cost is what its frame had left when the callee began
            step = self._open.pop()
            step.entry["gasCost"] = step.gas - step.computation.get_gas_remaining()
            self.kinds[id(computation)] = step.entry["op"]

    def step(self, computation: Any, opcode: int, mnemonic: str) -> None:
        stack = list(computation._stack.values)
        gas = computation.get_gas_remaining()
        entry: dict[str, Any] = {
            "pc": max(0, computation.code.program_counter - 1),
            "op": mnemonic,
            "gas": gas,
            "gasCost": 0,
            "depth": computation.msg.depth + 1,
        }
        if not self.config.disable_stack:
            entry["stack"] = [hex(_word(v)) for v in stack]
        if self.config.enable_memory:
            memory = bytes(computation._memory._bytes)
            entry["memory"] = ["0x" + memory[i : i + 32].hex() for i in range(0, len(memory), 32)]
        # The refund counter so far (py-evm keeps one per frame and hands it up: a
        # callee's shows its own).
        entry["refund"] = computation.get_gas_refund()
        self._note_state(computation, opcode, stack, entry)
        self.logs.append(entry)
        self._open.append(_Step(entry, gas, computation))

    def _note_state(self, computation: Any, opcode: int, stack: list[Any], entry: Any) -> None:
        address = bytes(computation.msg.storage_address)
        if opcode in _ACCOUNT_READS and stack:
            self.accounts.setdefault(_word(stack[-1]).to_bytes(32, "big")[12:])
        if opcode in (_SLOAD, _SSTORE) and stack:
            slot = _word(stack[-1])
            self.slots.setdefault(address, {})[slot] = None
            if self.config.disable_storage:
                return
            seen = self._storage.setdefault(address, {})
            if opcode == _SLOAD:
                seen[slot] = computation.state.get_storage(Address(address), slot)
            elif len(stack) > 1:
                seen[slot] = _word(stack[-2])
            entry["storage"] = {"0x" + _hex32(k): "0x" + _hex32(v) for k, v in seen.items()}

    def step_done(self) -> None:
        """The last opcode's cost, once it is done (a call's was set when its callee
        began; an opcode that failed is settled by the next one its caller runs)."""
        if self._open:
            step = self._open.pop()
            step.entry["gasCost"] = step.gas - step.computation.get_gas_remaining()


def _word(value: Any) -> int:
    return value if isinstance(value, int) else int.from_bytes(value, "big")


def _hex32(value: int) -> str:
    return value.to_bytes(32, "big").hex()


def traced_class(computation_class: Any) -> Any:
    """`computation_class` with py-evm's opcode loop reporting to the active tracer."""
    cached = _TRACED.get(computation_class)
    if cached is not None:
        return cached

    class Traced(computation_class):  # type: ignore[misc]
        @classmethod
        def apply_computation(
            cls, state: Any, message: Any, context: Any, parent_computation: Any = None
        ) -> Any:
            tracer = _ACTIVE.get()
            if tracer is None:
                return super().apply_computation(state, message, context, parent_computation)
            return _apply(cls, tracer, state, message, context, parent_computation)

    _TRACED[computation_class] = Traced
    return Traced


_TRACED: dict[Any, Any] = {}


def _apply(cls: Any, tracer: Tracer, state: Any, message: Any, context: Any, parent: Any) -> Any:
    """py-evm's `BaseComputation.apply_computation`, reporting each opcode."""
    with cls(state, message, context) as computation:
        if computation.is_origin_computation:
            computation.contracts_created = []
            if message.is_create:
                cls.consume_initcode_gas_cost(computation)
        if parent is not None:
            computation.contracts_created = parent.contracts_created
        if message.is_create:
            computation.contracts_created.append(message.storage_address)
        tracer.frame_started(computation)
        precompile = computation.precompiles.get(message.code_address)
        if precompile is not None:
            if not message.is_delegation:
                precompile(computation)
            return computation
        opcodes = computation.opcodes
        for opcode in computation.code:
            opcode_fn = opcodes.get(opcode)
            if opcode_fn is None:
                from eth.vm.logic.invalid import InvalidOpcode

                opcode_fn = InvalidOpcode(opcode)
            tracer.step(computation, opcode, _mnemonic(opcode_fn))
            try:
                opcode_fn(computation=computation)
            except Halt:
                tracer.step_done()
                break
            tracer.step_done()
    return computation


def _mnemonic(opcode_fn: Any) -> str:
    try:
        return str(opcode_fn.mnemonic)
    except AttributeError:
        return str(opcode_fn.__wrapped__.mnemonic)


@contextlib.contextmanager
def tracing(tracer: Tracer) -> Iterator[None]:
    token = _ACTIVE.set(tracer)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def traced_vm(chain: Any, header: BlockHeaderAPI) -> Any:
    """A VM for a block built on `header`'s parent whose computations can be traced."""
    return vm_with(chain, header, traced_class, "Traced")


def vm_with(chain: Any, header: BlockHeaderAPI, wrap: Any, label: str) -> Any:
    """A VM for a block built on `header`'s parent whose state runs the computation class
    `wrap` makes of the fork's own (py-evm has no hooks: its classes are the seam)."""
    vm = chain.get_vm(header)
    state_class = vm.get_state_class()
    wrapped_state = state_class.configure(
        __name__=label + state_class.__name__,
        computation_class=wrap(state_class.computation_class),
    )
    vm_class = type(vm).configure(__name__=label + type(vm).__name__, _state_class=wrapped_state)
    return vm_class(
        header=header,
        chaindb=chain.chaindb,
        chain_context=vm.chain_context,
        consensus_context=vm.consensus_context,
    )


@dataclass(frozen=True)
class Replayed:
    """A transaction run again with a tracer: what it did and the state before it."""

    tracer: Tracer
    computation: Any
    gas_used: int
    state_before: bytes
    state_after: bytes
    coinbase: bytes
    db: Any


def replay(chain: Any, block: BlockAPI, index: int, config: TraceConfig) -> Replayed:
    """Run transaction `index` of `block` again, its block's earlier ones first."""
    header = block.header
    return run(chain, header.parent_hash, header, block.transactions[: index + 1], config)


def run(
    chain: Any,
    parent_hash: bytes,
    like: BlockHeaderAPI,
    transactions: Sequence[Any],
    config: TraceConfig,
    free: bool = False,
) -> Replayed:
    """Run `transactions` in a block on `parent_hash` stamped and paid as `like`, the
    last one traced (`free`: at a base fee of 0, for a call at a gas price of 0, as
    `eth_call` runs one and geth's `debug_traceCall`)."""
    parent = chain.get_block_header_by_hash(parent_hash)
    header = chain.create_header_from_parent(
        parent, timestamp=like.timestamp, coinbase=like.coinbase
    )
    if free:
        header = header.copy(base_fee_per_gas=0)
    vm = traced_vm(chain, header)
    for tx in transactions[:-1]:
        receipt, _ = vm.apply_transaction(header, tx)
        header = vm.add_receipt_to_header(header, receipt)
    vm.state.persist()  # into the scratch copy: the prestate tracer reads it back
    before = vm.state.state_root
    tracer = Tracer(config)
    last = transactions[-1]
    vm.state.lock_changes()  # a new transaction: nothing warm, as py-evm's VM does
    with tracing(tracer):
        computation = vm.state.apply_transaction(last)  # no receipt: a call has none
    used = gas_used(last.gas, computation)
    vm.state.persist()
    after = vm.state.state_root
    return Replayed(tracer, computation, used, before, after, header.coinbase, chain.chaindb.db)


def result(replayed: Replayed, tx: Any) -> Any:
    """The trace the config asked for."""
    tracer = replayed.tracer.config.tracer
    if tracer == "callTracer":
        return call_frames(replayed, tx)
    if tracer == "prestateTracer":
        return prestate_diff(replayed) if replayed.tracer.config.diff_mode else prestate(replayed)
    return struct_logs(replayed)


def struct_logs(replayed: Replayed) -> dict[str, Any]:
    computation = replayed.computation
    return {
        "gas": replayed.gas_used,
        "failed": computation.is_error,
        "returnValue": "0x" + bytes(computation.output).hex(),
        "structLogs": replayed.tracer.logs,
    }


def call_frames(replayed: Replayed, tx: Any) -> dict[str, Any]:
    """geth's `callTracer` result: the top call and, unless only it, the calls it made."""
    top = _frame(replayed.computation, replayed.tracer, "CREATE" if not tx.to else "CALL")
    top["gasUsed"] = hex(replayed.gas_used)  # the receipt's; its `gas`: after intrinsic gas
    if replayed.tracer.config.only_top_call:
        top.pop("calls", None)
    return top


def _frame(computation: Any, tracer: Tracer, kind: str) -> dict[str, Any]:
    msg = computation.msg
    frame: dict[str, Any] = {
        "from": "0x" + bytes(msg.sender).hex(),
        "gas": hex(msg.gas),
        "gasUsed": hex(msg.gas - computation.get_gas_remaining()),
        "to": "0x" + bytes(msg.storage_address if msg.is_create else msg.to).hex(),
        "input": "0x" + bytes(msg.data_as_bytes).hex(),
        "type": kind,
    }
    if kind not in ("STATICCALL", "DELEGATECALL"):
        frame["value"] = hex(msg.value)
    output = bytes(computation.output)
    if output:
        frame["output"] = "0x" + output.hex()
    if computation.is_error:
        frame["error"] = _error(computation.error)
    children = [_frame(c, tracer, tracer.kinds.get(id(c), "CALL")) for c in computation.children]
    if children:
        frame["calls"] = children
    return frame


def _error(error: Any) -> str:
    """geth's words for how a frame failed."""
    name = type(error).__name__
    return {
        "Revert": "execution reverted",
        "OutOfGas": "out of gas",
        "InvalidInstruction": "invalid opcode",
        "InvalidJumpDestination": "invalid jump destination",
        "StackDepthLimit": "max call depth exceeded",
        "InsufficientFunds": "insufficient balance for transfer",
        "WriteProtection": "write protection",
        "InsufficientStack": "stack underflow",
        "FullStack": "stack overflow",
    }.get(name, str(error) or name)


def prestate(replayed: Replayed) -> dict[str, Any]:
    """geth's `prestateTracer` result: each account the transaction touched (its sender,
    the accounts its calls and opcodes reached, the block's fee recipient) as it was
    before, with the slots it read or wrote; an account it created, empty before, is not
    there (it had no prestate)."""
    touched = _touched(replayed)
    return {key: entry for key, entry in touched.items() if not _made(replayed, key, entry)}


def prestate_diff(replayed: Replayed) -> dict[str, Any]:
    """geth's `prestateTracer` with `diffMode`: `pre`, the touched accounts the transaction
    changed, as they were (of their slots, those it changed from a value other than
    zero), and `post`, what it changed in them (the fields that differ, the changed slots
    not left at zero). An account it deleted is in `pre` whole and not in `post`; one it
    created is in `post` only."""
    before = AccountDB(replayed.db, Hash32(replayed.state_before))
    after = AccountDB(replayed.db, Hash32(replayed.state_after))
    pre, post = {}, {}
    for key, entry in _touched(replayed).items():
        who = Address(bytes.fromhex(key[2:]))
        if not after.account_exists(who):
            # Deleted, if it was there before and the transaction did not make it; an
            # account that never existed (a precompile, an address only read) is no diff.
            if before.account_exists(who) and not _made(replayed, key, entry):
                pre[key] = entry
            continue
        now = _account(after, bytes(who), {})
        changed = {
            name: now.get(name, empty)
            for name, empty in (("balance", "0x0"), ("nonce", 0), ("code", "0x"))
            if entry.get(name, empty) != now.get(name, empty)
        }
        kept, stored, slots_changed = {}, {}, False
        for slot, value in entry.get("storage", {}).items():
            new = "0x" + _hex32(after.get_storage(who, int(slot, 16)))
            if new != value:
                slots_changed = True
                if int(value, 16):
                    kept[slot] = value
                if int(new, 16):
                    stored[slot] = new
        if not changed and not slots_changed:
            continue
        if stored:
            changed["storage"] = stored
        post[key] = changed
        if not _made(replayed, key, entry):
            pre[key] = {**_without(entry, "storage"), **({"storage": kept} if kept else {})}
    return {"pre": pre, "post": post}


def _touched(replayed: Replayed) -> dict[str, dict[str, Any]]:
    """Every account the transaction touched as it was before, with the slots it used."""
    before = AccountDB(replayed.db, Hash32(replayed.state_before))
    touched = dict(replayed.tracer.accounts)
    touched.setdefault(replayed.coinbase)
    return {
        "0x" + address.hex(): _account(before, address, replayed.tracer.slots.get(address, {}))
        for address in touched
    }


def _made(replayed: Replayed, key: str, entry: dict[str, Any]) -> bool:
    """Whether the transaction created this account, empty before it."""
    created = bytes.fromhex(key[2:]) in replayed.tracer.created
    return created and all(
        name == "storage" or value in ("0x0", 0, "0x") for name, value in entry.items()
    )


def _account(accounts: AccountDB, address: bytes, slots: Any) -> dict[str, Any]:
    """An account as the prestate tracer shows it: balance, nonce and code where not zero
    or empty, and `slots`' values."""
    who = Address(address)
    entry: dict[str, Any] = {"balance": hex(accounts.get_balance(who))}
    nonce = accounts.get_nonce(who)
    if nonce:
        entry["nonce"] = nonce
    code = accounts.get_code(who)
    if code:
        entry["code"] = "0x" + code.hex()
    if slots:
        entry["storage"] = {
            "0x" + _hex32(slot): "0x" + _hex32(accounts.get_storage(who, slot)) for slot in slots
        }
    return entry


def _without(entry: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != key}
