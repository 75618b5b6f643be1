"""`lattice devnet` as a user runs it: a real process, real HTTP, real restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streams.broker import free_port
from tests.txs import ACCOUNT, signed

pytestmark = pytest.mark.e2e
LATTICE = [sys.executable, "-m", "deploy.cli"]


class Devnet:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.rpc_port, self.ws_port = free_port(), free_port()
        self.log = data_dir.parent / f"devnet-{self.rpc_port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    *LATTICE,
                    "devnet",
                    "--data-dir",
                    str(self.data_dir),
                    "--rpc-port",
                    str(self.rpc_port),
                    "--ws-port",
                    str(self.ws_port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 60
        while "ready" not in self.output():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(60)
        self.process = None
        return code

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LATTICE, *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def tail(self) -> list[dict[str, object]]:
        result = self.cli("tail", "lattice.tx.submitted", "-n", "-1")
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def devnet(tmp_path: Path) -> Iterator[Devnet]:
    net = Devnet(tmp_path / "data")
    yield net
    if net.process is not None:
        net.process.kill()
        net.process.wait()


def test_devnet_prints_endpoints_and_serves_health(devnet: Devnet) -> None:
    devnet.start()
    out = devnet.output()
    for needle in (devnet.url, f"ws://127.0.0.1:{devnet.ws_port}", "kafka", "chain id"):
        assert needle in out
    health = httpx.get(f"{devnet.url}/health").json()
    assert health["status"] == "ok"
    endpoints = json.loads((devnet.data_dir / "devnet.json").read_text())
    assert endpoints["rpc"] == devnet.url
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
    before = devnet.tail()
    assert [r["value"]["hash"] for r in before] == hashes  # type: ignore[index]
    assert all(r["key"] == ACCOUNT.address.lower() for r in before)
    topics = devnet.cli("topics")
    assert "lattice.tx.submitted" in topics.stdout
    assert devnet.stop(signal.SIGINT) == 0

    devnet.start()
    assert "3 records re-seeded" in devnet.output()
    assert devnet.tail() == before  # same records, partitions, offsets and timestamps
    response = httpx.post(f"{devnet.url}/v1/transactions", json="0x" + signed(nonce=3).hex())
    assert response.status_code == 202
    assert devnet.stop() == 0

    devnet.start()
    after = devnet.tail()
    assert after[:3] == before
    assert [r["value"]["nonce"] for r in after] == [0, 1, 2, 3]  # type: ignore[index]


def test_second_devnet_on_the_same_data_dir_is_refused(devnet: Devnet) -> None:
    devnet.start()
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
