"""The Ethereum JSON-RPC on a real devnet, through web3.py and raw HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from web3 import Web3

from processors.execution.genesis import DEV_ACCOUNTS
from tests.devnets import Devnet, settled

pytestmark = pytest.mark.e2e
KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
KEY1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
# Init code that deploys runtime code returning 42 for any call.
RETURNS_42 = "0x600a600c600039600a6000f3602a60005260206000f3"


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(
        tmp_path_factory.mktemp("rpc") / "data", "--block-interval", "0.3", "--finality-depth", "3"
    )
    net.start()
    net.wait_set_up()
    yield net
    net.stop()


@pytest.fixture(scope="module")
def w3(devnet: Devnet) -> Web3:
    web3 = Web3(Web3.HTTPProvider(devnet.url))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until execution has written the genesis
        try:
            web3.eth.get_balance(DEV_ACCOUNTS[0])
            return web3
        except Exception:
            time.sleep(0.2)
    raise AssertionError("the ledger did not come up")


def rpc(devnet: Devnet, method: str, *params: Any) -> dict[str, Any]:
    response = httpx.post(
        devnet.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
    )
    return response.json()  # type: ignore[no-any-return]


def sign(w3: Web3, key: str, **tx: Any) -> bytes:
    """A signed EIP-1559 transaction at the sender's pending nonce, fields overridable."""
    acct = Account.from_key(key)
    full = {
        "chainId": 27182,
        "type": 2,
        "gas": 21_000,
        "value": 0,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 10**9,
        "nonce": w3.eth.get_transaction_count(acct.address, "pending"),
    }
    full.update(tx)
    return bytes(acct.sign_transaction(full).raw_transaction)


def send(w3: Web3, key: str, **tx: Any) -> Any:
    return w3.eth.send_raw_transaction(sign(w3, key, **tx))


def test_dev_accounts_and_chain(w3: Web3) -> None:
    assert w3.eth.chain_id == 27182
    assert w3.net.version == "27182"
    assert w3.eth.get_balance(DEV_ACCOUNTS[9]) == 10_000 * 10**18
    assert w3.eth.syncing is False
    assert w3.eth.get_block("earliest").number == 0
    assert w3.eth.get_block("finalized").number <= w3.eth.block_number


def test_block_time_is_the_wall_clock(w3: Web3) -> None:
    # Several blocks a second share a timestamp instead of running ahead of real time.
    start = w3.eth.block_number
    while w3.eth.block_number < start + 20:
        time.sleep(0.2)
    latest = w3.eth.get_block("latest")
    assert abs(latest["timestamp"] - time.time()) < 10
    stamps = [w3.eth.get_block(n)["timestamp"] for n in range(start, latest["number"] + 1)]
    assert stamps == sorted(stamps)


def test_back_to_back_transfers_with_pending_nonces(w3: Web3) -> None:
    dest = "0x" + "33" * 20
    before = w3.eth.get_balance(dest)
    hashes = [send(w3, KEY1, to=dest, value=10**15) for _ in range(4)]
    receipts = [settled(w3, h) for h in hashes]
    assert all(r.status == 1 for r in receipts)
    assert w3.eth.get_balance(dest) == before + 4 * 10**15
    tx = w3.eth.get_transaction(hashes[0])
    assert tx["from"] == DEV_ACCOUNTS[1] and tx.blockNumber == receipts[0].blockNumber
    block = w3.eth.get_block(receipts[-1].blockNumber, full_transactions=True)
    assert any(t.hash == hashes[-1] for t in block.transactions)
    assert w3.eth.get_transaction_count(DEV_ACCOUNTS[1]) >= 4


def test_deploy_and_call(w3: Web3) -> None:
    receipt = settled(w3, send(w3, KEY0, data=RETURNS_42, gas=100_000))
    assert receipt.contractAddress
    assert w3.eth.get_code(receipt.contractAddress).hex() == "602a60005260206000f3"
    assert int.from_bytes(w3.eth.call({"to": receipt.contractAddress}), "big") == 42
    assert (
        w3.eth.estimate_gas({"from": DEV_ACCOUNTS[0], "to": DEV_ACCOUNTS[2], "value": 1}) == 21_000
    )


@pytest.mark.parametrize(
    ("tx", "key", "message"),
    [
        ({"chainId": 1}, KEY0, "chain id"),
        ({"nonce": 0}, KEY0, "nonce too low"),
        ({"value": 10**30}, KEY0, "insufficient funds"),
        ({"gas": 40_000_000}, KEY0, "block gas limit"),
    ],
)
def test_refused_transactions_get_minus_32000_and_reach_nothing(
    devnet: Devnet, w3: Web3, tx: dict[str, Any], key: str, message: str
) -> None:
    if tx.get("nonce") == 0:
        send_first = send(w3, key, to=DEV_ACCOUNTS[3])  # make nonce 0 used
        settled(w3, send_first)
    raw = sign(w3, key, to=DEV_ACCOUNTS[3], **tx)
    sender = Account.from_key(key).address
    before = len(devnet.tail(sender=sender))
    answer = rpc(devnet, "eth_sendRawTransaction", "0x" + raw.hex())
    assert answer["error"]["code"] == -32000
    assert message in answer["error"]["message"]
    assert len(devnet.tail(sender=sender)) == before


def test_bad_signature_is_refused(devnet: Devnet) -> None:
    raw = bytes(
        Account.sign_transaction(
            {
                "chainId": 27182,
                "type": 2,
                "gas": 21_000,
                "to": DEV_ACCOUNTS[3],
                "value": 0,
                "maxFeePerGas": 10**10,
                "maxPriorityFeePerGas": 10**9,
                "nonce": 0,
            },
            KEY0,
        ).raw_transaction
    )
    tampered = raw[:-32] + b"\xff" * 32
    answer = rpc(devnet, "eth_sendRawTransaction", "0x" + tampered.hex())
    assert answer["error"]["code"] == -32000 and "signature" in answer["error"]["message"]


def test_protocol_errors(devnet: Devnet) -> None:
    assert httpx.post(devnet.url, content=b"{nope").json()["error"]["code"] == -32700
    assert rpc(devnet, "eth_noSuchMethod")["error"]["code"] == -32601
    bad = httpx.post(devnet.url, json={"id": 1, "method": "eth_chainId"}).json()
    assert bad["error"]["code"] == -32600
    batch = [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in range(1001)]
    assert httpx.post(devnet.url, json=batch).json()["error"]["code"] == -32600
    assert rpc(devnet, "eth_getBalance", "0x12")["error"]["code"] == -32602
    ok = httpx.post(
        devnet.url,
        json=[
            {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
            {"jsonrpc": "2.0", "id": 2, "method": "net_version"},
        ],
    )
    assert [r["result"] for r in ok.json()] == ["0x6a2e", "27182"]
    assert rpc(devnet, "web3_sha3", "0x")["result"] == (
        "0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )
    assert rpc(devnet, "eth_getTransactionReceipt", "0x" + "00" * 32)["result"] is None


def test_duplicates_and_replacements_are_judged_at_the_door(devnet: Devnet, w3: Web3) -> None:
    dest = DEV_ACCOUNTS[4]
    nonce = w3.eth.get_transaction_count(DEV_ACCOUNTS[1], "pending")

    def offer(value: int, fee_cap: int, tip: int) -> tuple[bytes, dict[str, Any]]:
        # Behind a nonce gap, so that no block can take it while the test replaces it.
        raw = sign(
            w3, KEY1, to=dest, nonce=nonce + 1, value=value, maxFeePerGas=fee_cap,
            maxPriorityFeePerGas=tip,
        )  # fmt: skip
        return raw, rpc(devnet, "eth_sendRawTransaction", "0x" + raw.hex())

    queued, answer = offer(0, 10**10, 10**9)
    assert "result" in answer
    assert w3.eth.get_transaction_count(DEV_ACCOUNTS[1], "pending") == nonce  # the gap
    again = rpc(devnet, "eth_sendRawTransaction", "0x" + queued.hex())
    assert again["error"] == {"code": -32000, "message": "already known"}
    _, cheap = offer(1, 11 * 10**9, 11 * 10**8 - 1)  # the tip is short of +10%
    assert cheap["error"]["code"] == -32000
    assert "replacement transaction underpriced" in cheap["error"]["message"]
    _, bumped = offer(2, 11 * 10**9, 11 * 10**8)
    replacement = bumped["result"]
    first = send(w3, KEY1, to=dest, nonce=nonce)  # fills the gap
    assert w3.eth.get_transaction_count(DEV_ACCOUNTS[1], "pending") == nonce + 2
    assert settled(w3, first).status == 1
    receipt = settled(w3, replacement)
    assert receipt.status == 1 and w3.eth.get_transaction(replacement)["value"] == 2
    replaced = "0x" + Web3.keccak(queued).hex().removeprefix("0x")
    assert rpc(devnet, "eth_getTransactionReceipt", replaced)["result"] is None


def test_a_batch_of_back_to_back_transactions_lands_in_order(devnet: Devnet, w3: Web3) -> None:
    account = Account.from_key(KEY0)
    nonce = w3.eth.get_transaction_count(account.address, "pending")
    raws = [sign(w3, KEY0, to=DEV_ACCOUNTS[5], value=1, nonce=nonce + i) for i in range(20)]
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_sendRawTransaction", "params": ["0x" + r.hex()]}
        for i, r in enumerate(raws)
    ]
    batch.append({"jsonrpc": "2.0", "method": "eth_chainId"})  # a notification: no answer
    answers = httpx.post(devnet.url, json=batch).json()
    assert [a["id"] for a in answers] == list(range(20))
    hashes = [a["result"] for a in answers]
    receipts = [settled(w3, h) for h in hashes]
    assert all(r.status == 1 for r in receipts)
    assert w3.eth.get_transaction_count(account.address) == nonce + 20
    only_notifications = httpx.post(devnet.url, json={"jsonrpc": "2.0", "method": "eth_chainId"})
    assert only_notifications.status_code == 204 and only_notifications.content == b""


def test_browsers_on_other_origins_may_call(devnet: Devnet) -> None:
    origin = {"origin": "http://dapp.example", "access-control-request-method": "POST"}
    preflight = httpx.options(devnet.url, headers=origin)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    call = httpx.post(
        devnet.url,
        json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
        headers={"origin": "http://dapp.example"},
    )
    assert call.json()["result"] == "0x6a2e"
    assert call.headers["access-control-allow-origin"] == "*"
    rest = httpx.get(f"{devnet.url}/v1/blocks/latest", headers={"origin": "http://dapp.example"})
    assert rest.headers["access-control-allow-origin"] == "*"


# A contract whose every call emits LOG2(topic0 = 0xaa..aa, topic1 = caller), no data:
# CALLER, PUSH32 0xaa.., PUSH1 0 (size), PUSH1 0 (offset), LOG2, STOP.
EMITTER_RUNTIME = "33" + "7f" + "aa" * 32 + "6000" + "6000" + "a2" + "00"
# Init code: CODECOPY the runtime (which follows these 12 bytes) to memory and RETURN it.
_SIZE = f"{len(EMITTER_RUNTIME) // 2:02x}"
EMITTER = f"0x60{_SIZE}600c60003960{_SIZE}6000f3" + EMITTER_RUNTIME


def test_logs_and_filters(devnet: Devnet, w3: Web3) -> None:
    created = settled(w3, send(w3, KEY0, data=EMITTER, gas=200_000))
    emitter = created.contractAddress
    # An explicit fromBlock: "latest" would be evaluated at each call, as geth does.
    start = hex(w3.eth.block_number)
    log_filter = rpc(devnet, "eth_newFilter", {"address": emitter, "fromBlock": start})["result"]
    block_filter = rpc(devnet, "eth_newBlockFilter")["result"]
    pending_filter = rpc(devnet, "eth_newPendingTransactionFilter")["result"]
    tx_hash = send(w3, KEY0, to=emitter, gas=60_000)
    receipt = settled(w3, tx_hash)
    (entry,) = receipt.logs
    assert entry.topics[0] == bytes.fromhex("aa" * 32)
    assert entry.topics[1] == bytes(12) + bytes.fromhex(DEV_ACCOUNTS[0][2:])

    by_topic = w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest", "topics": ["0x" + "aa" * 32]})
    assert [log.transactionHash for log in by_topic] == [tx_hash]
    assert w3.eth.get_logs({"fromBlock": 0, "topics": ["0x" + "bb" * 32]}) == []
    assert w3.eth.get_logs({"blockHash": receipt.blockHash})[0].logIndex == entry.logIndex

    changes = rpc(devnet, "eth_getFilterChanges", log_filter)["result"]
    assert [c["transactionHash"] for c in changes] == ["0x" + tx_hash.hex()]
    assert rpc(devnet, "eth_getFilterChanges", log_filter)["result"] == []
    assert len(rpc(devnet, "eth_getFilterLogs", log_filter)["result"]) == 1
    assert rpc(devnet, "eth_getFilterChanges", block_filter)["result"]
    assert "0x" + tx_hash.hex() in rpc(devnet, "eth_getFilterChanges", pending_filter)["result"]
    assert rpc(devnet, "eth_uninstallFilter", log_filter)["result"] is True
    assert rpc(devnet, "eth_getFilterChanges", log_filter)["error"]["code"] == -32000
    too_wide = rpc(
        devnet, "eth_getLogs", {"fromBlock": "0x0", "toBlock": "latest", "address": "0x12"}
    )
    assert too_wide["error"]["code"] == -32602


def test_websocket_calls_and_subscriptions(devnet: Devnet, w3: Web3) -> None:
    from websockets.sync.client import connect

    created = settled(w3, send(w3, KEY1, data=EMITTER, gas=200_000))
    with connect(f"ws://127.0.0.1:{devnet.ws_port}", open_timeout=10) as socket:

        def ask(ident: int, method: str, *params: Any) -> Any:
            socket.send(
                json.dumps(
                    {"jsonrpc": "2.0", "id": ident, "method": method, "params": list(params)}
                )
            )
            while True:
                message = json.loads(socket.recv(timeout=10))
                if message.get("id") == ident:
                    return message

        assert ask(1, "eth_chainId")["result"] == "0x6a2e"
        heads = ask(2, "eth_subscribe", "newHeads")["result"]
        logs = ask(3, "eth_subscribe", "logs", {"address": created.contractAddress})["result"]
        pending = ask(4, "eth_subscribe", "newPendingTransactions")["result"]
        assert ask(5, "eth_subscribe", "nonsense")["error"]["code"] == -32602
        tx_hash = "0x" + send(w3, KEY1, to=created.contractAddress, gas=60_000).hex()
        seen: dict[str, list[Any]] = {heads: [], logs: [], pending: []}
        deadline = time.monotonic() + 60
        while not all(seen.values()) and time.monotonic() < deadline:
            message = json.loads(socket.recv(timeout=30))
            if message.get("method") == "eth_subscription":
                seen[message["params"]["subscription"]].append(message["params"]["result"])
        assert tx_hash in seen[pending]
        assert seen[logs][0]["transactionHash"] == tx_hash
        assert int(seen[heads][0]["number"], 16) > 0 and "stateRoot" in seen[heads][0]
        assert ask(6, "eth_unsubscribe", heads)["result"] is True


def test_dag_methods(devnet: Devnet, w3: Web3) -> None:
    tips = rpc(devnet, "dag_getTips")["result"]
    assert tips and all(len(t) == 66 for t in tips)
    deadline = time.monotonic() + 60
    while len(chain := rpc(devnet, "dag_getVirtualChain", "0xa")["result"]) < 10:
        assert time.monotonic() < deadline, "the DAG did not grow"
        time.sleep(0.3)
    scores = [int(c["blueScore"], 16) for c in chain]
    assert scores == sorted(scores, reverse=True)
    assert any(c["final"] for c in chain) and not chain[0]["final"]
    block = rpc(devnet, "dag_getBlock", chain[3]["hash"])["result"]
    assert block["colour"] == "blue" and block["parents"]
    assert int(block["blueScore"], 16) == scores[3]
    assert block["selectedParent"] == chain[4]["hash"]
    assert rpc(devnet, "dag_getBlock", "0x" + "00" * 32)["result"] is None


def test_rest_mirrors(devnet: Devnet, w3: Web3) -> None:
    tx_hash = send(w3, KEY1, to=DEV_ACCOUNTS[5], value=7)
    receipt = settled(w3, tx_hash)
    base = f"{devnet.url}/v1"
    hex_hash = "0x" + tx_hash.hex()
    assert httpx.get(f"{base}/transactions/{hex_hash}").json()["hash"] == hex_hash
    assert httpx.get(f"{base}/receipts/{hex_hash}").json()["status"] == "0x1"
    by_number = httpx.get(f"{base}/blocks/{receipt.blockNumber}").json()
    assert hex_hash in by_number["transactions"]
    by_hash = httpx.get(f"{base}/blocks/{by_number['hash']}?full=true").json()
    assert by_hash["transactions"][0]["hash"].startswith("0x")
    assert httpx.get(f"{base}/blocks/latest").json()["number"]
    receipts = httpx.get(f"{base}/blocks/{receipt.blockNumber}/receipts").json()
    assert hex_hash in [r["transactionHash"] for r in receipts]
    account = httpx.get(f"{base}/accounts/{DEV_ACCOUNTS[9]}").json()
    assert account["balance"] == str(10_000 * 10**18) and account["nonce"] == 0
    assert httpx.get(f"{base}/receipts/0x{'00' * 32}").status_code == 404
    assert httpx.get(f"{base}/accounts/0x12").status_code == 400
    assert httpx.get(f"{base}/blocks/999999999").status_code == 404


def test_a_rest_only_client_follows_its_transaction_to_the_receipt(
    devnet: Devnet, w3: Web3
) -> None:
    raw = sign(w3, KEY1, to=DEV_ACCOUNTS[6], value=11)
    base = f"{devnet.url}/v1"
    before = int(httpx.get(f"{base}/accounts/{DEV_ACCOUNTS[6]}").json()["balance"])
    accepted = httpx.post(f"{base}/transactions", json="0x" + raw.hex())
    assert accepted.status_code == 202
    tx_hash = accepted.json()["hash"]
    deadline = time.monotonic() + 60
    while (found := httpx.get(f"{base}/receipts/{tx_hash}")).status_code == 404:
        assert time.monotonic() < deadline, "the REST mirror never saw the receipt"
        time.sleep(0.1)
    assert found.json()["status"] == "0x1"
    assert int(httpx.get(f"{base}/accounts/{DEV_ACCOUNTS[6]}").json()["balance"]) == before + 11
    number = int(found.json()["blockNumber"], 16)
    assert int(httpx.get(f"{base}/blocks/latest").json()["number"], 16) >= number


def test_erc20_deploy_transfer_and_events(w3: Web3) -> None:
    from contracts.build import load

    artifact = load("LatticeToken")
    token_class = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    deploy = token_class.constructor("Lattice", "LAT", 10**24).build_transaction(
        {
            "from": DEV_ACCOUNTS[2],
            "chainId": 27182,
            "gas": 2_000_000,
            "nonce": w3.eth.get_transaction_count(DEV_ACCOUNTS[2], "pending"),
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
        }
    )
    key2 = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
    created = settled(
        w3, w3.eth.send_raw_transaction(Account.sign_transaction(deploy, key2).raw_transaction)
    )
    token = w3.eth.contract(address=created.contractAddress, abi=artifact["abi"])
    assert token.functions.symbol().call() == "LAT"
    assert token.functions.balanceOf(DEV_ACCOUNTS[2]).call() == 10**24
    transfer = token.functions.transfer(DEV_ACCOUNTS[6], 12345).build_transaction(
        {
            "from": DEV_ACCOUNTS[2],
            "chainId": 27182,
            "gas": 100_000,
            "nonce": w3.eth.get_transaction_count(DEV_ACCOUNTS[2], "pending"),
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
        }
    )
    receipt = settled(
        w3, w3.eth.send_raw_transaction(Account.sign_transaction(transfer, key2).raw_transaction)
    )
    assert receipt.status == 1
    assert token.functions.balanceOf(DEV_ACCOUNTS[6]).call() == 12345
    (event,) = token.events.Transfer().process_receipt(receipt)
    assert event.args["to"] == DEV_ACCOUNTS[6] and event.args["value"] == 12345
    logs = token.events.Transfer().get_logs(from_block=created.blockNumber)
    assert [e.args["value"] for e in logs] == [10**24, 12345]
    # A transfer beyond the balance reverts with the contract's custom error.
    with pytest.raises(Exception, match=r"revert|cf479181"):
        token.functions.transfer(DEV_ACCOUNTS[2], 1).call({"from": DEV_ACCOUNTS[7]})


CAST = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "cast"


def test_cast_reads_balances_sends_and_reads_receipts(devnet: Devnet, w3: Web3) -> None:
    import subprocess

    def cast(*args: str) -> str:
        done = subprocess.run(
            [str(CAST), *args, "--rpc-url", devnet.url], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert cast("chain-id") == "27182"
    assert cast("balance", DEV_ACCOUNTS[8]) == str(10_000 * 10**18)
    key8 = "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97"
    sent = json.loads(
        cast("send", "--private-key", key8, "--json", DEV_ACCOUNTS[7], "--value", "1234")
    )
    assert sent["status"] == "0x1"
    receipt = json.loads(cast("receipt", "--json", sent["transactionHash"]))
    assert receipt["blockNumber"] == sent["blockNumber"]
    assert int(cast("balance", DEV_ACCOUNTS[7])) >= 10_000 * 10**18 + 1234


def test_ethers_sends_and_reads_back(devnet: Devnet, w3: Web3) -> None:
    import subprocess

    script = Path(__file__).with_name("ethers_client.mjs")
    key9 = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"
    done = subprocess.run(
        ["node", str(script), devnet.url, key9, DEV_ACCOUNTS[5]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "chainId": "27182",
        "status": 1,
        "hash": seen["hash"],
        "sameReceipt": True,
        "delta": str(25 * 10**16),
        "inBlock": True,
    }


def test_the_devnet_signs_for_its_dev_accounts(devnet: Devnet, w3: Web3) -> None:
    import subprocess

    from eth_account.messages import encode_defunct

    assert w3.eth.accounts == list(DEV_ACCOUNTS)
    sender, dest = DEV_ACCOUNTS[6], "0x" + "66" * 20
    sent = w3.eth.send_transaction({"from": sender, "to": dest, "value": 12_345})
    receipt = w3.eth.wait_for_transaction_receipt(sent)
    assert receipt.status == 1 and receipt["from"] == sender
    signature = w3.eth.sign(sender, text="lattice")
    assert Account.recover_message(encode_defunct(text="lattice"), signature=signature) == sender
    command = [str(CAST), "send", "--unlocked", "--from", sender, dest, "--value", "1"]
    done = subprocess.run(
        [*command, "--json", "--rpc-url", devnet.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "0x1"
    assert w3.eth.get_balance(dest) == 12_346


def test_a_transaction_behind_a_gap_is_pending_and_in_the_pool(w3: Web3) -> None:
    key3 = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
    sender = Account.from_key(key3).address
    nonce = w3.eth.get_transaction_count(sender, "pending")
    later = send(w3, key3, to="0x" + "67" * 20, value=1, nonce=nonce + 1)
    seen = w3.eth.get_transaction(later)
    assert seen["blockNumber"] is None and seen["nonce"] == nonce + 1
    pool = w3.provider.make_request("txpool_content", [])["result"]  # type: ignore[arg-type]
    assert list(pool["queued"][sender]) == [str(nonce + 1)]
    status = w3.provider.make_request("txpool_status", [])["result"]  # type: ignore[arg-type]
    assert int(status["queued"], 16) >= 1
    # Blocks go by while the gap is open: the one ahead of it must wait, not be proposed
    # (execution would refuse it and the one filling the gap would then be stale).
    start = w3.eth.block_number
    while w3.eth.block_number < start + 4:
        time.sleep(0.1)
    assert w3.eth.get_transaction(later)["blockNumber"] is None
    send(w3, key3, to="0x" + "67" * 20, value=1, nonce=nonce)  # fills the gap
    receipt = settled(w3, later)
    assert receipt.status == 1
    assert w3.eth.get_transaction(later)["blockNumber"] == receipt.blockNumber
