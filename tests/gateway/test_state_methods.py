"""State methods over a real execution store: Merkle proofs (EIP-1186) checked against
the block's state root, and calls and gas estimates with geth's state overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import rlp
from eth.rlp.accounts import Account as AccountRecord
from eth_hash.auto import keccak
from eth_utils.address import to_checksum_address
from trie.hexary import HexaryTrie

from gateway.jsonrpc import RpcError
from tests.gateway.test_chainview import COUNTER, Execution, with_counter

SLOT0 = "0x" + "00" * 32
SLOT5 = "0x" + "00" * 31 + "05"


def word(n: int) -> str:
    return n.to_bytes(32, "big").hex()


def proven(root: bytes, key: bytes, proof: list[str]) -> bytes:
    nodes = [rlp.decode(bytes.fromhex(node[2:])) for node in proof]
    return bytes(HexaryTrie.get_from_proof(root, keccak(key), nodes))


@pytest.fixture
def execution(tmp_path: Path) -> Any:
    ex = Execution(tmp_path / "store")
    yield ex
    ex.state.close()


def test_proofs_check_against_the_blocks_state_root(execution: Execution, tmp_path: Path) -> None:
    created, view, rpc = with_counter(execution, tmp_path)
    execution.block(2, to=to_checksum_address(created))  # slot 0 becomes 1
    view.refresh()
    counter = "0x" + created.hex()
    found = rpc("eth_getProof", counter, [SLOT0, SLOT5], "latest")
    root = bytes.fromhex(rpc("eth_getBlockByNumber", "latest", False)["stateRoot"][2:])
    account = rlp.decode(proven(root, created, found["accountProof"]), sedes=AccountRecord)
    assert (hex(account.nonce), hex(account.balance)) == (found["nonce"], found["balance"])
    assert "0x" + account.storage_root.hex() == found["storageHash"]
    assert "0x" + account.code_hash.hex() == found["codeHash"]
    assert account.code_hash == keccak(bytes.fromhex(COUNTER))
    one, five = found["storageProof"]
    assert (one["key"], one["value"], five["value"]) == (SLOT0, "0x1", "0x0")
    value = proven(account.storage_root, bytes(32), one["proof"])
    assert rlp.decode(value, sedes=rlp.sedes.big_endian_int) == 1
    assert proven(account.storage_root, bytes.fromhex(SLOT5[2:]), five["proof"]) == b""
    # At block 1 the slot was still empty; an account nobody has is proven absent.
    assert rpc("eth_getProof", counter, [SLOT0], "0x1")["storageProof"][0]["value"] == "0x0"
    nobody = rpc("eth_getProof", "0x" + "98" * 20, [], "latest")
    assert proven(root, b"\x98" * 20, nobody["accountProof"]) == b""
    assert nobody["balance"] == "0x0" and nobody["storageProof"] == []
    view.close()


def test_calls_and_estimates_take_state_overrides(execution: Execution, tmp_path: Path) -> None:
    created, view, rpc = with_counter(execution, tmp_path)
    counter = "0x" + created.hex()
    call = {"to": counter}
    assert rpc("eth_call", call, "latest") == "0x" + word(1) + word(1)
    seven = {counter: {"stateDiff": {SLOT0: "0x" + word(7)}}}
    assert rpc("eth_call", call, "latest", seven) == "0x" + word(8) + word(1)
    assert rpc("eth_call", call, "latest") == "0x" + word(1) + word(1)  # nothing kept
    # Code put at an empty address runs there; a whole storage replaced reads empty.
    elsewhere = "0x" + "77" * 20
    code = {elsewhere: {"code": "0x" + COUNTER, "state": {SLOT5: "0x" + word(3)}}}
    assert rpc("eth_call", {"to": elsewhere}, "latest", code) == "0x" + word(1) + word(1)
    # A sender with no funds sends value once given a balance (and a nonce of its own).
    poor = "0x" + "55" * 20
    pay = {"from": poor, "to": "0x" + "66" * 20, "value": "0x64"}
    with pytest.raises(RpcError):
        rpc("eth_call", pay, "latest")
    rich = {poor: {"balance": "0xde0b6b3a7640000", "nonce": "0x5"}}
    assert rpc("eth_call", pay, "latest", rich) == "0x"
    assert rpc("eth_estimateGas", pay, "latest", rich) == hex(21_000)
    for bad in (
        {counter: {"state": {}, "stateDiff": {}}},
        {counter: {"colour": "red"}},
        {counter: {"stateDiff": {"0x01": "0x02"}}},  # slots are 32 bytes
        [counter],
    ):
        with pytest.raises(RpcError) as refused:
            rpc("eth_call", call, "latest", bad)
        assert refused.value.code == -32602, bad
    view.close()


def test_a_set_code_transaction_reads_back_with_its_authorizations(
    execution: Execution, tmp_path: Path
) -> None:
    from eth_account import Account

    from processors.execution.genesis import DEV_ACCOUNTS
    from tests.processors.execution.test_ledger import ordered, transfer

    created, view, rpc = with_counter(execution, tmp_path)
    key1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
    delegate = {"chainId": 27182, "address": "0x" + created.hex(), "nonce": 0}
    auth = Account.sign_authorization(delegate, key1)
    raw = transfer(1, value=0, type=4, to=DEV_ACCOUNTS[1], gas=100_000, authorizationList=[auth])
    execution.ledger.execute(ordered(2, [raw]))
    execution.commit()
    view.refresh()
    seen = rpc("eth_getTransactionByHash", "0x" + keccak(raw).hex())
    assert seen["type"] == "0x4" and seen["to"] == DEV_ACCOUNTS[1].lower()
    (listed,) = seen["authorizationList"]
    assert (listed["address"], listed["nonce"], listed["chainId"]) == (
        "0x" + created.hex(),
        "0x0",
        hex(27182),
    )
    assert rpc("eth_getRawTransactionByHash", "0x" + keccak(raw).hex()) == "0x" + raw.hex()
    assert rpc("eth_getCode", DEV_ACCOUNTS[1], "latest") == "0xef0100" + created.hex()
    # A call to the authority runs the counter on the authority's storage (slot 0 is 1).
    assert rpc("eth_call", {"to": DEV_ACCOUNTS[1]}, "latest") == "0x" + word(2) + word(1)
    view.close()


def test_access_lists_name_what_the_code_touches_and_settle(
    execution: Execution, tmp_path: Path
) -> None:
    created, view, rpc = with_counter(execution, tmp_path)
    counter = "0x" + created.hex()
    found = rpc("eth_createAccessList", {"to": counter, "gas": "0x30000"}, "latest")
    # The recipient is not listed as an account, but the slots its code reads are.
    assert found["accessList"] == [{"address": counter, "storageKeys": [SLOT0]}]
    listed = int(found["gasUsed"], 16)
    plain = int(rpc("eth_estimateGas", {"to": counter}, "latest"), 16)
    # Listed up front: the account 2,400 and the slot 1,900; its first read is then warm
    # (100 rather than 2,100).
    assert listed == plain + 2_400 + 1_900 - 2_000
    # A contract that only forwards to the counter lists the counter and its slot.
    forward = (
        "60006000600060006000" + "73" + created.hex() + "5af1" + "00"
    )  # CALL(gas, counter, 0, 0, 0, 0, 0); STOP
    elsewhere = "0x" + "78" * 20
    code = {elsewhere: {"code": "0x" + forward}}
    through = rpc("eth_createAccessList", {"to": elsewhere}, "latest", code)
    assert through["accessList"] == [{"address": counter, "storageKeys": [SLOT0]}]
    view.close()


def test_simulated_blocks_carry_state_and_take_overrides(
    execution: Execution, tmp_path: Path
) -> None:

    created, view, rpc = with_counter(execution, tmp_path)
    counter = "0x" + created.hex()
    head = rpc("eth_getBlockByNumber", "latest", False)
    reverter, parent_hash = "0x" + "79" * 20, "0x" + "7a" * 20
    # NUMBER, 1, SWAP1, SUB, BLOCKHASH, then return the word: the previous block's hash.
    blockhash_code = "0x" + "4360019003" + "40" + "60005260206000f3"
    logs_word = "60aa60005260206000a000"  # MSTORE 0xaa, LOG0 of it, STOP: an init code
    request = {
        "blockStateCalls": [
            {"calls": [{"to": counter}, {"to": counter}, {"data": "0x" + logs_word}]},
            {
                "blockOverrides": {"time": hex(int(head["timestamp"], 16) + 60)},
                "stateOverrides": {
                    counter: {"stateDiff": {SLOT0: "0x" + word(10)}},
                    reverter: {"code": "0x60006000fd"},
                    parent_hash: {"code": blockhash_code},
                },
                "calls": [{"to": counter}, {"to": reverter}, {"to": parent_hash}],
            },
        ]
    }
    first, second = rpc("eth_simulateV1", request, "latest")
    assert int(first["number"], 16) == int(head["number"], 16) + 1
    assert second["parentHash"] == first["hash"]
    assert int(second["timestamp"], 16) == int(head["timestamp"], 16) + 60
    one, two, made = first["calls"]
    assert (one["returnData"], two["returnData"]) == (
        "0x" + word(1) + word(1),
        "0x" + word(2) + word(1),  # the first call's write is seen; transient storage not
    )
    # Each call is a transaction of its own: the slot is cold again for the second, whose
    # write (1 -> 2) costs 2,900 where the first's (0 -> 1) cost 20,000.
    assert int(one["gasUsed"], 16) - int(two["gasUsed"], 16) == 20_000 - 2_900
    assert made["status"] == "0x1" and [e["data"] for e in made["logs"]] == ["0x" + word(0xAA)]
    assert made["logs"][0]["blockHash"] == first["hash"]
    assert int(first["gasUsed"], 16) == sum(int(c["gasUsed"], 16) for c in first["calls"])
    eleven, reverted, previous = second["calls"]
    assert previous["returnData"] == first["hash"]  # a simulated block is an ancestor too
    assert eleven["returnData"] == "0x" + word(11) + word(1)
    assert reverted["status"] == "0x0" and reverted["error"]["code"] == 3
    assert rpc("eth_call", {"to": counter}, "latest") == "0x" + word(1) + word(1)  # nothing kept

    def refused(payload: Any) -> int:
        with pytest.raises(RpcError) as error:
            rpc("eth_simulateV1", payload, "latest")
        return error.value.code

    assert refused({"blockStateCalls": [{"calls": []}] * 257}) == -38026
    backwards = {"blockOverrides": {"number": head["number"]}, "calls": []}
    assert refused({"blockStateCalls": [backwards]}) == -38020
    funded = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # dev account 2, nonce 0
    high = {"calls": [{"from": funded, "to": counter, "nonce": "0x5"}]}
    assert refused({"blockStateCalls": [high], "validation": True}) == -38011
    assert refused({"blockStateCalls": "nope"}) == -32602
    # What would change the answer and is not applied is refused by name, not ignored.
    assert refused({"blockStateCalls": [{"blockOverrides": {"prevRandao": "0x1"}}]}) == -32602
    listed = {"to": counter, "accessList": [{"address": counter, "storageKeys": []}]}
    assert refused({"blockStateCalls": [{"calls": [listed]}]}) == -32602
    assert refused({"blockStateCalls": [], "returnLogs": True}) == -32602
    view.close()


def test_simulation_logs_ether_moved_and_returns_full_transactions(
    execution: Execution, tmp_path: Path
) -> None:
    """`traceTransfers`: each move of ether logged as an ERC-20 transfer from the native-
    asset address, in its place among the call's own logs, none for a frame that reverted;
    `returnFullTransactions`: the calls as transactions."""
    _, view, rpc = with_counter(execution, tmp_path)
    funded = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # dev account 2
    forwarder, reverter, receiver = "0x" + "f0" * 20, "0x" + "f1" * 20, "0x" + "f2" * 20

    def send_one(to: str) -> str:  # CALL(gas, to, 1, 0, 0, 0, 0), POP
        return "6000600060006000600173" + to[2:] + "5af150"

    # LOG0 of the word 0xaa, then one wei to the receiver and one to a reverter.
    code = "0x60aa600052" + "60206000a0" + send_one(receiver) + send_one(reverter) + "00"
    call = {"from": funded, "to": forwarder, "value": "0x5"}
    overrides = {forwarder: {"code": code}, reverter: {"code": "0x60006000fd"}}
    block = {"stateOverrides": overrides, "calls": [call]}
    request = {"blockStateCalls": [block], "traceTransfers": True, "returnFullTransactions": True}
    (simulated,) = rpc("eth_simulateV1", request, "latest")
    (result,) = simulated["calls"]
    assert result["status"] == "0x1"
    native, transfer = "0x" + "ee" * 20, "0x" + keccak(b"Transfer(address,address,uint256)").hex()

    def topic(who: str) -> str:
        return "0x" + "00" * 12 + who[2:].lower()

    logs = [(e["address"].lower(), e["topics"], e["data"]) for e in result["logs"]]
    assert logs == [
        (native, [transfer, topic(funded), topic(forwarder)], "0x" + word(5)),
        (forwarder, [], "0x" + word(0xAA)),
        (native, [transfer, topic(forwarder), topic(receiver)], "0x" + word(1)),
    ]
    assert [e["logIndex"] for e in result["logs"]] == ["0x0", "0x1", "0x2"]
    (tx,) = simulated["transactions"]
    assert tx["hash"] == result["logs"][0]["transactionHash"]
    assert (tx["from"].lower(), tx["to"].lower(), tx["value"]) == (funded.lower(), forwarder, "0x5")
    assert tx["blockHash"] == simulated["hash"] and tx["transactionIndex"] == "0x0"
    # Without the options: the contract's own log only, and hashes.
    (plain,) = rpc("eth_simulateV1", {"blockStateCalls": [block]}, "latest")
    assert [e["data"] for e in plain["calls"][0]["logs"]] == ["0x" + word(0xAA)]
    assert plain["transactions"] == [tx["hash"]]
    view.close()


def test_a_traced_transaction_sees_only_what_its_block_did_before_it(
    execution: Execution, tmp_path: Path
) -> None:
    """The second of two calls in a block: its slot is cold again (a transaction of its
    own), and it reads what the first wrote."""
    from tests.processors.execution.test_ledger import ordered, transfer

    created, view, rpc = with_counter(execution, tmp_path)
    calls = [transfer(n, value=0, to=to_checksum_address(created), gas=100_000) for n in (1, 2)]
    execution.ledger.execute(ordered(2, calls))
    execution.commit()
    view.refresh()
    second = "0x" + keccak(calls[1]).hex()
    logs = rpc("debug_traceTransaction", second, {})["structLogs"]
    (sload,) = [entry for entry in logs if entry["op"] == "SLOAD"]
    assert sload["gasCost"] == 2_100 and sload["storage"] == {SLOT0: "0x" + word(1)}
    receipt = rpc("eth_getTransactionReceipt", second)
    assert (
        rpc("debug_traceTransaction", second, {"tracer": "callTracer"})["gasUsed"]
        == (receipt["gasUsed"])
    )
    # diffMode: the counter's slot 1 -> 2, the sender's nonce and balance, the fee
    # recipient's balance; the deployment: the contract in `post` only.
    diff = {"tracer": "prestateTracer", "tracerConfig": {"diffMode": True}}
    pre, post = rpc("debug_traceTransaction", second, diff).values()
    counter = "0x" + created.hex()
    assert pre[counter]["storage"] == {SLOT0: "0x" + word(1)}
    assert post[counter] == {"storage": {SLOT0: "0x" + word(2)}}
    senders = [k for k, v in post.items() if "nonce" in v]
    assert len(senders) == 1 and post[senders[0]]["nonce"] == pre[senders[0]]["nonce"] + 1
    assert int(post[senders[0]]["balance"], 16) < int(pre[senders[0]]["balance"], 16)
    assert set(pre) == set(post)  # nothing touched and left as it was
    whole = rpc("debug_traceTransaction", second, {"tracer": "prestateTracer"})
    assert all(whole[k]["balance"] == v["balance"] for k, v in pre.items())
    deployment = rpc("eth_getBlockByNumber", "0x1", False)["transactions"][0]
    pre, post = rpc("debug_traceTransaction", deployment, diff).values()
    assert counter not in pre and post[counter]["nonce"] == 1 and "code" in post[counter]
    assert counter not in rpc("debug_traceTransaction", deployment, {"tracer": "prestateTracer"})
    # A precompile the transaction reached, and that never existed: no diff of it.
    precompile = "0x" + "00" * 19 + "01"
    poke = transfer(3, value=0, to=to_checksum_address(precompile), gas=100_000)
    execution.ledger.execute(ordered(3, [poke]))
    execution.commit()
    view.refresh()
    traced = rpc("debug_traceTransaction", "0x" + keccak(poke).hex(), diff)
    assert precompile not in traced["pre"] and precompile not in traced["post"]
    assert precompile in rpc(
        "debug_traceTransaction", "0x" + keccak(poke).hex(), {"tracer": "prestateTracer"}
    )
    view.close()
