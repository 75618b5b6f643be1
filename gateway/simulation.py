"""`eth_simulateV1`: calls run as the transactions of blocks that never exist, one block
after another on top of a real one, with state and block overrides, as the execution-apis
specification and geth define it.

Each simulated block is built from its parent as the ledger builds one (its number the
next, its time the parent's plus one second unless overridden, the parent's fee recipient
and gas limit), on a scratch copy of the chain (`ChainView.scratch_ledger`); its calls run
in order on the state the ones before left, and the next block starts from its state. A
call gives its sender's nonce when it names none. Without `validation`, as in geth, the
base fee is 0 (unless overridden) and a call pays no gas; with it, fees are charged and a
call the state refuses (nonce, funds, fee below the base fee) fails the whole request with
the specification's code. With `traceTransfers`, every move of ether by a call or a
creation (not a delegate call) is logged as geth logs it: an ERC-20 `Transfer` from
ERC-7528's native-asset address, in its place among the call's logs and dropped with a
frame that reverts. (A self-destruct's sweep is not logged: py-evm runs it as no message.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import rlp
from eth.abc import BlockHeaderAPI
from eth.vm.spoof import SpoofTransaction
from eth_bloom import BloomFilter  # type: ignore[attr-defined]
from eth_hash.auto import keccak
from eth_typing import Address
from eth_utils import ValidationError  # type: ignore[attr-defined]

from gateway.chainview import apply_override, gas_used
from gateway.tracing import vm_with
from processors.execution.ledger import rejection_code

#: The most blocks one request may simulate (the specification's).
MAX_BLOCKS = 256
#: Seconds between simulated blocks when their time is not given.
TIME_STEP = 1
#: The specification's codes for calls the state refuses (`validation`), by the ledger's
#: rejection codes.
REFUSALS = {
    "nonce_too_low": -38010,
    "nonce_too_high": -38011,
    "fee_below_base_fee": -38012,
    "insufficient_funds": -38014,
}


#: Where `traceTransfers` logs ether from (ERC-7528's address for a chain's native asset).
NATIVE_ASSET = bytes.fromhex("ee" * 20)
TRANSFER_TOPIC = int.from_bytes(keccak(b"Transfer(address,address,uint256)"), "big")


class SimulationError(Exception):
    """A request the specification refuses as a whole, with its error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SimCall:
    sender: bytes
    to: bytes | None
    gas: int | None
    value: int
    data: bytes
    nonce: int | None = None
    gas_price: int | None = None


@dataclass(frozen=True)
class SimBlock:
    """A block to simulate: what it overrides of the block and of the state, its calls."""

    calls: tuple[SimCall, ...]
    number: int | None = None
    time: int | None = None
    gas_limit: int | None = None
    fee_recipient: bytes | None = None
    base_fee: int | None = None
    overrides: tuple[tuple[bytes, Any], ...] = ()


@dataclass(frozen=True)
class CallResult:
    tx: SpoofTransaction  # the call as the unsigned transaction it ran as
    hash: bytes
    output: bytes
    logs: tuple[Any, ...]
    gas_used: int
    error: Any  # py-evm's error, or None


@dataclass(frozen=True)
class Simulated:
    header: BlockHeaderAPI
    calls: tuple[CallResult, ...]


def simulate(
    chain: Any,
    base: BlockHeaderAPI,
    blocks: Sequence[SimBlock],
    validation: bool,
    trace_transfers: bool = False,
) -> list[Simulated]:
    """Run `blocks` one after another on top of `base` (`trace_transfers`: ether moved
    is logged as ERC-20 transfers, see the module)."""
    if len(blocks) > MAX_BLOCKS:
        raise SimulationError(-38026, f"too many blocks: at most {MAX_BLOCKS}")
    out = []
    parent = base
    for block in blocks:
        header = _header(chain, parent, block, validation)
        simulated = _run_block(chain, header, block, validation, trace_transfers)
        out.append(simulated)
        parent = simulated.header
    return out


def _header(chain: Any, parent: BlockHeaderAPI, block: SimBlock, validation: bool) -> Any:
    number = parent.block_number + 1 if block.number is None else block.number
    if number <= parent.block_number:
        raise SimulationError(-38020, f"block number {number} is not above {parent.block_number}")
    stamp = parent.timestamp + TIME_STEP if block.time is None else block.time
    if stamp <= parent.timestamp and block.time is not None:
        raise SimulationError(-38021, f"block time {stamp} is not after {parent.timestamp}")
    header = chain.create_header_from_parent(
        parent,
        timestamp=stamp,
        coinbase=block.fee_recipient or parent.coinbase,
        gas_limit=block.gas_limit or parent.gas_limit,
    ).copy(block_number=number)
    if block.base_fee is not None:
        return header.copy(base_fee_per_gas=block.base_fee)
    if not validation:
        return header.copy(base_fee_per_gas=0)
    return header


def _run_block(
    chain: Any, header: Any, block: SimBlock, validation: bool, trace_transfers: bool
) -> Simulated:
    vm = vm_with(chain, header, _logging_transfers, "Logged") if trace_transfers else None
    vm = vm or chain.get_vm(header)
    state = vm.state
    for address, override in block.overrides:
        apply_override(state, address, override)
    results = []
    used = 0
    for call in block.calls:
        left = header.gas_limit - used
        gas = call.gas if call.gas is not None else left
        if gas > left:
            raise SimulationError(-38015, f"block gas limit reached: {gas} asked, {left} left")
        tx = _transaction(vm, state, call, gas, header, validation)
        state.lock_changes()  # a new transaction: nothing warm, as py-evm's VM does
        try:
            computation = state.apply_transaction(tx)
        except ValidationError as exc:
            code = REFUSALS.get(rejection_code(str(exc)), -32602)
            raise SimulationError(code, str(exc)) from None
        spent = gas_used(gas, computation)
        used += spent
        logs = tuple(computation.get_log_entries())
        output = bytes(computation.output)
        results.append(CallResult(tx, _hash(tx), output, logs, spent, _error(computation)))
    state.persist()
    bloom = BloomFilter()
    for result in results:
        for address, topics, _ in result.logs:
            if trace_transfers and address == NATIVE_ASSET:
                continue  # geth's bloom is its receipts': the transfers are the tracer's
            bloom.add(address)
            for topic in topics:
                bloom.add(topic.to_bytes(32, "big"))
    final = header.copy(state_root=state.state_root, gas_used=used, bloom=int(bloom))
    chain.chaindb.persist_header(final)  # in the scratch copy: BLOCKHASH of later blocks
    return Simulated(final, tuple(results))


def _transaction(
    vm: Any, state: Any, call: SimCall, gas: int, header: Any, validation: bool
) -> SpoofTransaction:
    sender = Address(call.sender)
    nonce = state.get_nonce(sender) if call.nonce is None else call.nonce
    price = call.gas_price
    if price is None:
        price = (header.base_fee_per_gas or 0) if validation else 0
    unsigned = vm.create_unsigned_transaction(
        nonce=nonce,
        gas_price=price,
        gas=gas,
        to=Address(call.to or b""),
        value=call.value,
        data=call.data,
    )
    return SpoofTransaction(unsigned, from_=sender)


def _hash(tx: SpoofTransaction) -> bytes:
    """A simulated call's hash: of its unsigned transaction (it has no signature)."""
    return keccak(rlp.encode(tx.spoof_target))


def _error(computation: Any) -> Any:
    return computation.error if computation.is_error else None


def _logging_transfers(computation_class: Any) -> Any:
    """`computation_class` logging the ether each message moves as it starts (so the log
    comes before the callee's own, and goes with the frame if it reverts)."""
    cached = _LOGGING.get(computation_class)
    if cached is not None:
        return cached

    class LoggingTransfers(computation_class):  # type: ignore[misc]
        def __init__(self, state: Any, message: Any, transaction_context: Any) -> None:
            super().__init__(state, message, transaction_context)
            if message.value and message.should_transfer_value:
                # geth names the code's address for CALLCODE, the new one for a creation.
                to = message.storage_address if message.is_create else message.code_address
                topics = (TRANSFER_TOPIC, _word(message.sender), _word(to))
                self.add_log_entry(NATIVE_ASSET, topics, message.value.to_bytes(32, "big"))

    _LOGGING[computation_class] = LoggingTransfers
    return LoggingTransfers


_LOGGING: dict[Any, Any] = {}


def _word(address: bytes) -> int:
    return int.from_bytes(address, "big")
