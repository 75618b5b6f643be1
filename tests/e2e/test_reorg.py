"""A devnet whose DAG is made to reorganise: a late, heavier side branch takes the virtual
chain from under the optimistic head. A WebSocket subscription sees the logs of the
dropped block removed (geth's `removed: true`) and the transaction's logs again once the
new chain merges its block; its receipt moves to the new block; the final chain never
changed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_hash.auto import keccak
from web3 import Web3

from processors.dag.blocks import Proposer
from streams.kafka import Producer
from streams.topics import topic
from tests.devnets import Devnet, rpc
from tests.e2e.test_json_rpc import EMITTER, KEY1, send

pytestmark = pytest.mark.e2e
#: Blocks of the side branch: well above the blue score the public chain holds above
#: its last final block (the finality depth, with two proposers at 0.5 s).
SIDE_BRANCH = 60


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(
        tmp_path_factory.mktemp("reorg") / "data",
        "--block-interval",
        "0.5",
        "--finality-depth",
        "20",
        "--workers",
        "0",
        "--proposers",
        "1",  # no parallel blocks: the only reorganisation is the test's
    )
    net.start()
    net.wait_set_up()
    yield net
    net.stop()


def late_branch(fork: bytes, count: int) -> list[Any]:
    """`count` blocks in a chain on `fork`, by a proposer nobody heard from until now."""
    proposer = Proposer(PrivateKey(keccak(b"lattice test: a late proposer")))
    now = int(time.time() * 1000)
    blocks, parent = [], fork
    for n in range(count):
        block = proposer.make_block([parent], now - (count - n) * 10, n, [])
        blocks.append(block)
        parent = block.hash
    return blocks


def test_a_late_heavier_branch_removes_logs_and_the_chain_merges_them_back(
    devnet: Devnet,
) -> None:
    from websockets.sync.client import connect

    w3 = Web3(Web3.HTTPProvider(devnet.url))
    created = w3.eth.wait_for_transaction_receipt(
        send(w3, KEY1, data=EMITTER, gas=200_000), timeout=60, poll_latency=0.1
    )
    emitter = created.contractAddress
    with connect(f"ws://127.0.0.1:{devnet.ws_port}", open_timeout=10) as socket:
        socket.send(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "eth_subscribe",
                    "params": ["logs", {"address": emitter}],
                }
            )
        )
        assert "result" in json.loads(socket.recv(timeout=10))
        tx_hash = send(w3, KEY1, to=emitter, gas=60_000)
        first = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.05)
        assert first.blockNumber > w3.eth.get_block("safe").number, "final already: too slow"
        chain = rpc(devnet.url, "dag_getVirtualChain", ["0x40"])
        fork = next(c["hash"] for c in chain if c["final"])
        kafka = json.loads((devnet.data_dir / "devnet.json").read_text())["kafka"]
        producer = Producer(kafka)
        branch = late_branch(bytes.fromhex(fork[2:]), SIDE_BRANCH)
        for block in branch:
            producer.send(topic("blocks.proposed"), block, key="0x" + block.proposer.hex())
        producer.close()

        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            message = json.loads(socket.recv(timeout=30))
            if message.get("method") == "eth_subscription":
                seen.append(message["params"]["result"])
    assert [(e["transactionHash"], e["removed"]) for e in seen] == [
        ("0x" + tx_hash.hex(), False),
        ("0x" + tx_hash.hex(), True),
        ("0x" + tx_hash.hex(), False),
    ]
    assert seen[1]["blockHash"] == seen[0]["blockHash"] == "0x" + first.blockHash.hex()
    assert seen[2]["blockHash"] != seen[0]["blockHash"]
    again = w3.eth.get_transaction_receipt(tx_hash)
    assert "0x" + again.blockHash.hex() == seen[2]["blockHash"] and again.status == 1
    # The side branch is the chain now.
    chain = [c["hash"] for c in rpc(devnet.url, "dag_getVirtualChain", ["0x100"])]
    assert "0x" + branch[-1].hash.hex() in chain and fork in chain
