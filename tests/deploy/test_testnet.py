"""`lattice testnet`: four node hosts, a broker host and a worker host in network
namespaces (root only: CI runs as root). Transactions go to random nodes; every node serves
the same blocks, state roots and receipts; the active DAG processor is SIGKILLed (its
standby on the other node takes over: the ordered chain has no gap and no duplicate); a
node's link is cut for 30 s and restored (it catches up, no divergence); Ctrl-C removes
the namespaces, links and bridge."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.txs import signed

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]
LATTICE = [sys.executable, "-m", "deploy.cli"]


def rpc(url: str, method: str, params: list[Any] | None = None) -> Any:
    answer = httpx.post(
        url,
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []},
        timeout=10,
    ).json()
    assert "error" not in answer, (url, method, answer)
    return answer["result"]


class Net:
    def __init__(self, data_dir: Path, process: subprocess.Popen[bytes], log: Path) -> None:
        self.data_dir, self.process, self.log = data_dir, process, log
        self.info: dict[str, Any] = json.loads((data_dir / "testnet.json").read_text())
        self.urls = [n["rpc"] for n in self.info["nodes"]]

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def testnet(tmp_path: Path) -> Iterator[Net]:
    data_dir, log = tmp_path / "testnet", tmp_path / "testnet.log"
    command = [*LATTICE, "testnet", "--nodes", "4", "--data-dir", str(data_dir)]
    command += ["--block-interval", "0.3", "--finality-depth", "3"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 180
    while "ready;" not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    net = Net(data_dir, process, log)
    try:
        yield net
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(120)


def send_to_random_nodes(net: Net, nonces: range, rng: random.Random) -> list[str]:
    return [
        rpc(rng.choice(net.urls), "eth_sendRawTransaction", ["0x" + signed(nonce=n).hex()])
        for n in nonces
    ]


def receipts_everywhere(net: Net, hashes: list[str], timeout: float = 120) -> None:
    """Every transaction has its receipt on every node, and the same one."""
    deadline = time.monotonic() + timeout
    for tx in hashes:
        seen = []
        for url in net.urls:
            while (found := rpc(url, "eth_getTransactionReceipt", [tx])) is None:
                assert time.monotonic() < deadline, f"no receipt for {tx} at {url}"
                time.sleep(0.3)
            seen.append(found)
        assert all(r == seen[0] for r in seen) and seen[0]["status"] == "0x1"


def same_chain_everywhere(net: Net) -> int:
    """Block hashes and state roots agree on every node at every height they all have."""
    head = min(int(rpc(url, "eth_blockNumber"), 16) for url in net.urls)
    for number in range(head + 1):
        blocks = [rpc(u, "eth_getBlockByNumber", [hex(number), False]) for u in net.urls]
        assert len({(b["hash"], b["stateRoot"]) for b in blocks}) == 1, number
    return head


def ordered_chain(net: Net) -> list[int]:
    tail = subprocess.run(
        [*LATTICE, "tail", "lattice.blocks.ordered", "-n", "-1", "--kafka", net.info["broker"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tail.returncode == 0, tail.stderr
    return [json.loads(line)["value"]["chain_index"] for line in tail.stdout.splitlines()]


def active_dag(net: Net) -> dict[str, Any]:
    """The node whose DAG processor last took the lead, and that processor's status."""
    latest = max(
        (Path(n["data_dir"]) / "logs" / "dag.log" for n in net.info["nodes"][:2]),
        key=lambda p: max(
            (line[:23] for line in p.read_text().splitlines() if "active; sending" in line),
            default="",
        ),
    )
    node = next(n for n in net.info["nodes"] if Path(n["data_dir"]) == latest.parents[1])
    processes = rpc(node["rpc"], "lattice_status")["processes"]
    return {"node": node, "dag": next(p for p in processes if p["name"] == "dag")}


@pytest.mark.timeout(900)  # six hosts on two cores, a 30 s cut, and the catching up after
def test_four_nodes_serve_one_ledger_through_faults(testnet: Net) -> None:
    rng = random.Random(7)
    first = send_to_random_nodes(testnet, range(0, 6), rng)
    receipts_everywhere(testnet, first)
    assert same_chain_everywhere(testnet) > 0
    status = rpc(testnet.urls[2], "lattice_status")
    assert status["checkpoints"]["replicas"] == 4 and status["checkpoints"]["quorum"] == 3

    # The active DAG processor dies; the standby on the other node takes over.
    active = active_dag(testnet)
    os.kill(active["dag"]["pid"], signal.SIGKILL)
    during = send_to_random_nodes(testnet, range(6, 12), rng)
    receipts_everywhere(testnet, during)
    chain = ordered_chain(testnet)
    assert chain == list(range(1, len(chain) + 1))  # no gap, no duplicate

    # One node's link is cut for 30 s: the others go on; it catches up when restored.
    cut = testnet.info["nodes"][3]
    others = testnet.urls[:3]
    subprocess.run(["ip", "link", "set", cut["link"], "down"], check=True)
    try:
        rng_others = random.Random(8)
        sent = [
            rpc(rng_others.choice(others), "eth_sendRawTransaction", ["0x" + signed(nonce=n).hex()])
            for n in range(12, 18)
        ]
        time.sleep(30)
    finally:
        subprocess.run(["ip", "link", "set", cut["link"], "up"], check=True)
    receipts_everywhere(testnet, sent, timeout=180)
    same_chain_everywhere(testnet)
    chain = ordered_chain(testnet)
    assert chain == list(range(1, len(chain) + 1))

    testnet.process.send_signal(signal.SIGINT)
    assert testnet.process.wait(120) == 0
    assert "stopped (namespaces, links and bridge removed)" in testnet.output()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert cut["netns"] not in names
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert testnet.info["bridge"] not in links
