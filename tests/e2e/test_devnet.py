"""`lattice devnet` as a user runs it: a real process, real HTTP, real restarts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams.broker import free_port
from tests.devnets import LATTICE, Devnet, rpc
from tests.txs import ACCOUNT, signed

pytestmark = pytest.mark.e2e


@pytest.fixture
def devnet(tmp_path: Path) -> Iterator[Devnet]:
    net = Devnet(tmp_path / "data")
    yield net
    if net.process is not None:
        net.process.kill()
        net.process.wait()


def test_devnet_prints_endpoints_serves_health_and_keeps_its_data_dir(devnet: Devnet) -> None:
    devnet.start()
    out = devnet.output()
    for needle in (devnet.url, f"ws://127.0.0.1:{devnet.ws_port}", "kafka", "chain id"):
        assert needle in out
    health = httpx.get(f"{devnet.url}/health").json()
    assert health["status"] == "ok"
    endpoints = json.loads((devnet.data_dir / "devnet.json").read_text())
    assert endpoints["rpc"] == devnet.url
    # A second devnet on the same data directory is refused while this one runs.
    clash = subprocess.run(
        [
            *LATTICE,
            "devnet",
            "--data-dir",
            str(devnet.data_dir),
            "--rpc-port",
            str(free_port()),
            "--ws-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert clash.returncode == 1
    assert "another devnet is running" in clash.stderr
    assert devnet.stop() == 0
    assert not (devnet.data_dir / "devnet.json").exists()
    assert "stopped" in devnet.output()


def test_transactions_survive_restarts_exactly_once(devnet: Devnet) -> None:
    devnet.start()
    hashes = []
    for nonce in range(3):
        response = httpx.post(
            f"{devnet.url}/v1/transactions", json="0x" + signed(nonce=nonce).hex()
        )
        assert response.status_code == 202, response.text
        hashes.append(response.json()["hash"])
    bad = httpx.post(f"{devnet.url}/v1/transactions", json="0x" + signed(chainId=1).hex())
    assert bad.json()["error"]["code"] == "wrong_chain_id"
    # The devnet's own transactions (dev account 0's deposit and API key, the worker's
    # stake) share the topic; this test follows its own account's.
    before = devnet.tail(sender=ACCOUNT.address)
    assert [r["value"]["hash"] for r in before] == hashes  # type: ignore[index]
    topics = devnet.cli("topics")
    assert "lattice.tx.submitted" in topics.stdout
    assert devnet.stop(signal.SIGINT) == 0
    # Every Kafka client was closed before the broker stopped: no librdkafka connection
    # errors (its log lines read "%3|<time>|FAIL|<client>| ...") on Ctrl-C.
    assert "|FAIL|" not in devnet.output() and "stopped" in devnet.output()

    devnet.start()
    assert re.search(r"lattice\.tx\.submitted: [3-9] records", devnet.output())  # re-seeded
    # Same records, partitions, offsets and timestamps.
    assert devnet.tail(sender=ACCOUNT.address) == before
    response = httpx.post(f"{devnet.url}/v1/transactions", json="0x" + signed(nonce=3).hex())
    assert response.status_code == 202
    # The whole process group at once: the broker must still outlive the archive's drain.
    assert devnet.stop(signal.SIGTERM, group=True) == 0

    devnet.start()
    after = devnet.tail(sender=ACCOUNT.address)
    assert after[:3] == before
    assert [r["value"]["nonce"] for r in after] == [0, 1, 2, 3]  # type: ignore[index]


def test_proposers_make_a_parallel_dag_and_replicas_agree(tmp_path: Path) -> None:
    net = Devnet(
        tmp_path / "dag",
        "--proposers",
        "4",
        "--block-interval",
        "0.2",
        "--ghostdag-k",
        "1",
        "--finality-depth",
        "3",
    )
    replica: subprocess.Popen[bytes] | None = None
    try:
        net.start()
        kafka = json.loads((net.data_dir / "devnet.json").read_text())["kafka"]
        replica = subprocess.Popen(
            [
                *LATTICE,
                "dag",
                "run",
                "--kafka",
                kafka,
                "--group-id",
                "replica-b",
                "--output-topic",
                "lattice.blocks.ordered.replica-b",
                "--ghostdag-k",
                "1",
                "--finality-depth",
                "3",
                "--data-dir",
                str(tmp_path / "replica"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        hashes = set()
        for nonce in range(6):
            response = httpx.post(
                f"{net.url}/v1/transactions", json="0x" + signed(nonce=nonce).hex()
            )
            assert response.status_code == 202
            hashes.add(response.json()["hash"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ordered = net.tail("lattice.blocks.ordered")
            txs = {t["hash"] for r in ordered for t in r["value"]["transactions"]}
            if hashes <= txs and len(ordered) > 30:
                break
            time.sleep(1)
        assert hashes <= txs, "submitted transactions were not ordered in time"
        proposed = net.tail("lattice.blocks.proposed")
        assert any(len(b["value"]["parents"]) > 1 for b in proposed)
        assert len({b["value"]["proposer"] for b in proposed}) == 4
        values = [r["value"] for r in ordered]
        assert [v["chain_index"] for v in values] == list(range(1, len(values) + 1))
        assert sum(len(v["mergeset_reds"]) for v in values) > 0
        all_txs = [t["hash"] for v in values for t in v["transactions"]]
        assert len(all_txs) == len(set(all_txs))
        time.sleep(2)
        other = net.tail("lattice.blocks.ordered.replica-b")
        mine = net.tail("lattice.blocks.ordered")
        common = min(len(other), len(mine))
        assert common > 20
        assert [r["value"] for r in other[:common]] == [r["value"] for r in mine[:common]]
    finally:
        if replica is not None:
            replica.terminate()
            replica.wait(30)
        if net.process is not None:
            assert net.stop() == 0


def test_replicas_sign_checkpoints_and_finalize(tmp_path: Path) -> None:
    net = Devnet(
        tmp_path / "replicas", "--replicas", "3", "--block-interval", "0.3", "--finality-depth", "3"
    )
    try:
        net.start()
        deadline = time.monotonic() + 60
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            answer = httpx.post(
                net.url, json={"jsonrpc": "2.0", "id": 1, "method": "lattice_status"}
            ).json()
            status = answer.get("result", {})
            if int(status.get("checkpoints", {}).get("finalized", "0x0"), 16) >= 8:
                break
            time.sleep(0.5)
        checkpoints = status["checkpoints"]
        assert checkpoints["replicas"] == 3 and checkpoints["quorum"] == 2
        assert status["healthy"] is True and checkpoints["divergences"] == []
        finalized = int(checkpoints["finalized"], 16)
        assert 8 <= finalized <= int(status["head"], 16)
        block = httpx.post(
            net.url,
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "eth_getBlockByNumber",
                "params": ["finalized", False],
            },
        ).json()["result"]
        assert int(block["number"], 16) >= finalized
        # Only replica 0 publishes: one executed record per block number.
        numbers = [r["value"]["number"] for r in net.tail("lattice.blocks.executed")]
        assert len(numbers) == len(set(numbers))
        signers = {r["value"]["signer"] for r in net.tail("lattice.checkpoints")}
        assert len(signers) == 3
    finally:
        if net.process is not None:
            assert net.stop() == 0


def test_a_killed_child_is_restarted_and_loses_no_acknowledged_transaction(
    tmp_path: Path,
) -> None:
    net = Devnet(tmp_path / "supervised", "--block-interval", "0.3", "--finality-depth", "3")
    try:
        net.start()
        processes = {p["name"]: p for p in rpc(net.url, "lattice_status")["processes"]}
        assert {"dag", "execution", "proposer-0", "proposer-1", "worker-0"} <= set(processes)
        assert all(p["state"] == "running" and p["restarts"] == 0 for p in processes.values())
        victims = ["proposer-0", "execution", "worker-0"]
        hashes: list[str] = []
        nonce = 0
        for victim in victims:
            for _ in range(4):
                response = httpx.post(
                    f"{net.url}/v1/transactions", json="0x" + signed(nonce=nonce).hex()
                )
                assert response.status_code == 202, response.text
                hashes.append(response.json()["hash"])
                nonce += 1
            os.kill(processes[victim]["pid"], signal.SIGKILL)
            time.sleep(0.5)
        deadline = time.monotonic() + 60
        while True:
            now = {p["name"]: p for p in rpc(net.url, "lattice_status")["processes"]}
            if all(now[v]["restarts"] == 1 and now[v]["state"] == "running" for v in victims):
                break
            assert time.monotonic() < deadline, now
            time.sleep(0.5)
        for victim in victims:
            # The reason, then the last line of its log (a busy proposer's last block, say).
            assert now[victim]["lastExit"].startswith("killed by SIGKILL")
            assert now[victim]["pid"] != processes[victim]["pid"]
            assert re.search(f"{victim} killed by SIGKILL(: .*)?; restarting in", net.output())
        deadline = time.monotonic() + 120
        receipts: dict[str, Any] = {}
        while len(receipts) < len(hashes):
            assert time.monotonic() < deadline, f"receipts for {len(receipts)}/{len(hashes)}"
            for tx in hashes:
                if tx not in receipts:
                    found = rpc(net.url, "eth_getTransactionReceipt", [tx])
                    if found is not None:
                        receipts[tx] = found
            time.sleep(0.5)
        assert all(r["status"] == "0x1" for r in receipts.values())
        table = net.cli("status")
        assert table.returncode == 0, table.stderr
        assert re.search(r"proposer-0\s+running\s+\d+\s+1  killed by SIGKILL", table.stdout)
        assert rpc(net.url, "eth_getTransactionCount", [ACCOUNT.address, "latest"]) == hex(nonce)
    finally:
        if net.process is not None:
            assert net.stop() == 0
