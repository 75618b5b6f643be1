"""The gateway's read-only view over the execution processor's own RocksDB (a secondary
instance), with the store written the way execution writes it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import rlp
from eth.estimators.gas import binary_gas_search_exact
from eth.vm.spoof import SpoofTransaction
from eth_account import Account
from eth_typing import Address
from eth_utils.address import to_checksum_address

from gateway import chainview
from gateway.app import json_rpc_methods
from gateway.chainview import CallFailed, ChainView, least_gas
from gateway.intake import TransactionIntake
from gateway.jsonrpc import JsonRpc, RpcError, call_of
from gateway.ledger import LedgerQueries
from processors.execution.db import overlay_chain_db
from processors.execution.genesis import dev_genesis
from processors.execution.ledger import Ledger
from processors.execution.processor import EVM_PREFIX
from processors.execution.transactions import ChainRules
from processors.state import RocksStore
from streams.kafka import Producer
from streams.settings import CHAIN_ID
from tests.processors.execution.test_ledger import ordered

KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
# Runtime code: slot 0 += 1, transient slot 0 += 1, return both words. A call that wrote
# through to the next one would see 2 instead of 1.
COUNTER = (
    "600054600101806000556000526000" "5c600101806000" "5d602052" "60406000f3"
)  # fmt: skip
# Init code: copy the runtime (after these 12 bytes) to memory and return it.
_SIZE = f"{len(COUNTER) // 2:02x}"
DEPLOY_COUNTER = f"60{_SIZE}600c60003960{_SIZE}6000f3" + COUNTER
# Runtime code returning 5 KiB of zeros (RETURN(0, 0x1400)); its init code copies it.
_BIG = "6114006000f3"
RETURNS_5K = f"60{len(_BIG) // 2:02x}600c60003960{len(_BIG) // 2:02x}6000f3" + _BIG


class Execution:
    """Executes blocks into a store the way the execution processor commits."""

    def __init__(self, store: Path) -> None:
        self.state = RocksStore(store)
        db, self.overlay = overlay_chain_db(lambda key: self.state.get(EVM_PREFIX + key))
        self.ledger = Ledger(db, dev_genesis(30_000_000), ChainRules(CHAIN_ID))
        self.commit()
        self.nonce = 0

    def commit(self) -> None:
        for key, value in self.overlay.take_changes().items():
            if value is not None:
                self.state.put(EVM_PREFIX + key, value)
        self.state.commit({})

    def block(self, n: int, **tx: Any) -> Any:
        full = {
            "type": 2,
            "chainId": CHAIN_ID,
            "nonce": self.nonce,
            "gas": 200_000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
            "value": 0,
            **tx,
        }
        self.nonce += 1
        raw = bytes(Account.sign_transaction(full, KEY0).raw_transaction)
        result = self.ledger.execute(ordered(n, [raw]))
        self.commit()
        return result


@pytest.fixture
def execution(tmp_path: Path) -> Any:
    ex = Execution(tmp_path / "store")
    yield ex
    ex.state.close()


def test_refresh_sees_new_blocks_and_skips_catch_up_when_nothing_changed(
    execution: Execution, tmp_path: Path
) -> None:
    view = ChainView(tmp_path / "store", CHAIN_ID)
    assert view.head().block_number == 0
    view.refresh()
    assert view.refresh() is False  # nothing new: no catch-up
    execution.block(1, to=to_checksum_address(b"\x22" * 20), value=5)
    assert view.head().block_number == 0  # not until refreshed
    assert view.refresh() is True
    assert view.head().block_number == 1
    assert view.state(view.head()).get_balance(Address(b"\x22" * 20)) == 5
    assert view.refresh() is False
    view.close()


class Rpc:
    """JSON-RPC over a view, called as a client would: results, or `RpcError`s."""

    def __init__(self, view: ChainView) -> None:
        self.ledger = LedgerQueries(view, block_gas_limit=30_000_000)
        intake = TransactionIntake(ChainRules(CHAIN_ID), _NoSink(), self.ledger)
        self.rpc = JsonRpc(json_rpc_methods(self.ledger, intake, chain_id=CHAIN_ID))

    def __call__(self, method: str, *params: Any) -> Any:
        return asyncio.run(self.rpc.run(method, list(params)))

    def spoof(self, call: dict[str, Any], head: Any) -> Any:
        return self.ledger.spoof(call_of(call), head)


class _NoSink(Producer):
    def __init__(self) -> None:
        pass

    def send(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no transactions in this test")


def with_counter(execution: Execution, tmp_path: Path) -> tuple[bytes, ChainView, Rpc]:
    """The counter deployed in block 1, a view of the store and JSON-RPC over it."""
    created = execution.block(1, to="", data=DEPLOY_COUNTER).receipts[0].contract_address
    assert created is not None
    view = ChainView(tmp_path / "store", CHAIN_ID)
    return created, view, Rpc(view)


def test_calls_share_a_state_per_head_and_never_see_each_others_writes(
    execution: Execution, tmp_path: Path
) -> None:
    created, view, rpc = with_counter(execution, tmp_path)
    call = {"to": "0x" + created.hex()}
    one = "0x" + (1).to_bytes(32, "big").hex() * 2
    assert rpc("eth_call", call, "latest") == one
    # Run again past the gateway's memo of outcomes: storage and transient storage reverted.
    head = view.head()
    tx = rpc.spoof(call, head)
    assert [view.call(head, tx).output for _ in range(2)] == [bytes.fromhex(one[2:])] * 2
    execution.block(2, to=to_checksum_address(created))  # a real call: slot 0 becomes 1
    view.refresh()
    two_then_one = "0x" + (2).to_bytes(32, "big").hex() + (1).to_bytes(32, "big").hex()
    assert rpc("eth_call", call, "latest") == two_then_one
    assert rpc("eth_call", call, "0x1") == one  # an older block's state still answers
    # A call moving more than the sender has is refused, like geth's.
    broke = {**call, "from": "0x" + "77" * 20, "value": "0x1"}
    with pytest.raises(RpcError) as refused:
        rpc("eth_call", broke, "latest")
    assert refused.value.code == -32000
    view.close()


def test_the_same_call_on_the_same_block_runs_once(execution: Execution, tmp_path: Path) -> None:
    created, view, rpc = with_counter(execution, tmp_path)
    runs: list[int] = []
    run = view.call
    view.call = lambda header, tx, overrides=(): (  # type: ignore[method-assign]
        runs.append(header.block_number) or run(header, tx, overrides)
    )
    call = {"to": "0x" + created.hex()}
    first = rpc("eth_call", call, "latest")
    assert rpc("eth_call", dict(reversed(call.items())), "latest") == first  # field order
    assert runs == [1]
    execution.block(2, to=to_checksum_address(created))
    view.refresh()
    assert rpc("eth_call", call, "latest") != first and runs == [1, 2]  # a new head
    assert rpc("eth_call", call, "0x1") == first and runs == [1, 2]  # block 1 is remembered
    # Refusals are remembered too, and each answer is a fresh error.
    broke = {**call, "from": "0x" + "77" * 20, "value": "0x1"}
    errors = []
    for _ in range(2):
        with pytest.raises(RpcError) as refused:
            rpc("eth_call", broke, "latest")
        errors.append(refused.value)
    assert runs == [1, 2, 2] and errors[0] is not errors[1]
    assert errors[0].code == errors[1].code == -32000 and errors[0].message == errors[1].message
    # Large outputs are not kept (memory stays bounded): a 5 KiB return runs every time.
    big = execution.block(3, to="", data=RETURNS_5K).receipts[0].contract_address
    view.refresh()
    for _ in range(2):
        assert len(rpc("eth_call", {"to": "0x" + big.hex()}, "latest")) == 2 + 2 * 5120
    assert runs == [1, 2, 2, 3, 3]
    view.close()


def test_call_messages_run_exactly_as_py_evm_builds_them(
    execution: Execution, tmp_path: Path
) -> None:
    created, view, rpc = with_counter(execution, tmp_path)
    head = view.head()
    sender = "0x" + bytes.fromhex(Account.from_key(KEY0).address[2:]).hex()
    calls = [
        {"to": "0x" + created.hex()},
        {"to": "0x" + created.hex(), "from": sender, "gas": "0x10000"},
        {"to": "0x" + "22" * 20, "from": sender, "value": "0x5"},
        {"from": sender, "data": "0x" + DEPLOY_COUNTER},  # a creation: py-evm's own path
        {"to": "0x" + created.hex(), "gas": "0x5300"},  # runs out of gas
    ]
    for call in calls:
        tx = rpc.spoof(call, head)
        ours = view.call(head, tx)
        with view.costless_state(head) as state:
            executor = state.get_transaction_executor()
            executor.validate_transaction(tx)
            reference = executor.build_computation(executor.build_evm_message(tx), tx)
        assert (ours.output, ours.is_error, ours.get_gas_remaining()) == (
            reference.output,
            reference.is_error,
            reference.get_gas_remaining(),
        ), call
    view.close()


def deploy_code(runtime: str) -> str:
    """Init code returning `runtime` (under 256 bytes) as the contract's code."""
    size = f"{len(runtime) // 2:02x}"
    return f"60{size}600c60003960{size}6000f3" + runtime


def calling(callee: bytes) -> str:
    """Runtime code that CALLs `callee` with all its gas and reverts if that call failed."""
    return (
        "6000" * 5 + "73" + callee.hex() + "5a" + "f1" + "15" + "6026" + "57" + "00"
        + "5b" + "6000" + "6000" + "fd"
    )  # fmt: skip


def test_gas_estimates_are_geths_least_gas_within_its_tolerance(
    execution: Execution, tmp_path: Path
) -> None:
    counter, view, rpc = with_counter(execution, tmp_path)
    caller = execution.block(2, to="", data=deploy_code(calling(counter)))
    caller_address = caller.receipts[0].contract_address
    assert caller_address is not None
    view.refresh()
    head = view.head()
    sender = Account.from_key(KEY0).address
    cases = [
        ({"from": sender, "to": "0x" + "22" * 20, "value": "0x5"}, True),  # exact: 21,000
        ({"from": sender, "to": "0x" + counter.hex()}, True),  # reads and writes a slot
        # A nested call gets 63/64 of what is left: it needs more than it uses.
        ({"from": sender, "to": "0x" + caller_address.hex()}, False),
    ]
    for call, exact_expected in cases:
        tx = rpc.spoof(call, head)
        ours = view.estimate_gas(head, tx)
        with view.vm(head).in_costless_state() as state:
            least = binary_gas_search_exact(state, tx)
        assert least <= ours <= least * 1015 // 1000 + 1, call
        assert (ours == least) is exact_expected, (call, ours, least)
        assert not view.call(head, SpoofTransaction(tx, gas=ours)).is_error
    assert rpc("eth_estimateGas", cases[0][0], "latest") == hex(21_000)
    view.close()


def test_gas_estimates_of_failing_calls_say_why(execution: Execution, tmp_path: Path) -> None:
    reverts = execution.block(1, to="", data=deploy_code("60006000fd")).receipts[0]
    loops = execution.block(2, to="", data=deploy_code("5b600056")).receipts[0]
    view = ChainView(tmp_path / "store", CHAIN_ID)
    rpc = Rpc(view)
    for created, code, message in (
        (reverts, 3, "execution reverted"),
        (loops, -32000, "gas required exceeds allowance (1000000)"),
    ):
        assert created.contract_address is not None
        call = {"to": "0x" + created.contract_address.hex(), "gas": hex(1_000_000)}
        with pytest.raises(RpcError) as failed:
            rpc("eth_estimateGas", call, "latest")
        assert (failed.value.code, failed.value.message) == (code, message)
    broke = {"from": "0x" + "77" * 20, "to": "0x" + "22" * 20, "value": "0x1"}
    with pytest.raises(RpcError) as refused:
        rpc("eth_estimateGas", broke, "latest")
    assert refused.value.code == -32000 and "invalid call" in refused.value.message
    view.close()


def test_least_gas_searches_like_geth() -> None:
    class Outcome:
        def __init__(self, gas: int, need: int, use: int) -> None:
            self.is_error = gas < need
            self.error = "out of gas" if self.is_error else None
            self._left = gas - use

        def get_gas_remaining(self) -> int:
            return self._left

        def get_gas_refund(self) -> int:
            return 0

    for need, use in ((21_000, 21_000), (60_000, 50_000), (5_000_000, 100_000)):
        runs: list[int] = []

        def run(gas: int, need: int = need, use: int = use, runs: list[int] = runs) -> Outcome:
            runs.append(gas)
            return Outcome(gas, need, use)

        found = least_gas(run, 30_000_000)
        assert need <= found <= need * 1015 // 1000 + 1
        assert len(runs) <= 25
    with pytest.raises(CallFailed):
        least_gas(lambda gas: Outcome(gas, 40_000_000, 0), 30_000_000)


def test_blocks_report_their_encoded_size(execution: Execution, tmp_path: Path) -> None:
    _, view, rpc = with_counter(execution, tmp_path)
    block = rpc("eth_getBlockByNumber", "0x1", False)
    assert int(block["size"], 16) == len(rlp.encode(view.block(1))) > 600  # header + a tx
    execution.block(2, to="0x" + "22" * 20)  # a transfer: no init code in the block
    view.refresh()
    transfer = rpc("eth_getBlockByNumber", "0x2", True)
    assert int(transfer["size"], 16) == len(rlp.encode(view.block(2))) < int(block["size"], 16)
    view.close()


def test_ready_only_once_the_ledger_answers_state_reads(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from gateway.app import create_app
    from streams.settings import Settings

    view = ChainView(tmp_path / "store", CHAIN_ID)
    client = TestClient(create_app(Settings(), _NoSink(), view))
    health = client.get("/health").json()
    assert health["live"] is True and health["ready"] is False
    assert "genesis" in health["reason"]
    assert client.get("/ready").status_code == 503
    execution = Execution(tmp_path / "store")  # execution writes the genesis
    try:
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"ready": True, "head": 0}
        assert client.get("/health").json()["ready"] is True
    finally:
        execution.state.close()
        view.close()


def test_the_node_cache_holds_its_byte_budget_and_rereads_what_it_dropped(
    execution: Execution, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = 8 * 1024
    monkeypatch.setattr(chainview, "HASHED_CACHE_BYTES", budget)
    view = ChainView(tmp_path / "store", CHAIN_ID)
    recipients = [bytes([0x40 + n]) * 20 for n in range(24)]
    for n, recipient in enumerate(recipients, start=1):
        execution.block(n, to=to_checksum_address(recipient), value=n)
        view.refresh()
        state = view.state(view.head())
        # Every earlier recipient too: the paths to them change block by block.
        assert [state.get_balance(Address(r)) for r in recipients[:n]] == list(range(1, n + 1))
    held = sum(chainview._entry_size(value) for value in view._hashed.values())
    assert 0 < held <= budget
    view.close()
