"""`lattice broker` as a host of its own: a network of one node (proposing, ordering,
publishing) runs on it with no Kafka install, and what it acknowledged survives a restart
of both from the broker's archive."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from streams.broker import free_port
from tests.devnets import LATTICE, rpc
from tests.e2e.test_node import Node, receipt, send

pytestmark = pytest.mark.e2e


def start_broker(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start it (appending to `log`) and wait for its "ready"."""
    before = log.read_text().count("ready;") if log.exists() else 0
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [*LATTICE, "broker", "--broker-port", str(port), "--data-dir", str(data_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 60
    while log.read_text().count("ready;") == before:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return process


def test_a_one_node_network_on_the_broker_host_survives_restarts(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "broker.log"
    broker = start_broker(tmp_path / "broker", port, log)
    roles = ("--roles", "proposer,dag,publisher", "--block-interval", "0.3")
    node = Node(tmp_path / "node", f"127.0.0.1:{port}", *roles, "--finality-depth", "3")
    try:
        assert f"lattice node --kafka 127.0.0.1:{port}" in log.read_text()
        node.start()
        tx = send(node.url, 0)
        first = receipt(node.url, tx)
        assert first["status"] == "0x1"
        assert node.stop() == 0
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(60) == 0
        assert "archived" in log.read_text() and "stopped" in log.read_text()

        broker = start_broker(tmp_path / "broker", port, log)
        assert "records re-seeded" in log.read_text()
        node.start()  # same data directory: its replica resumes where it was
        assert receipt(node.url, tx) == first
        assert receipt(node.url, send(node.url, 1))["status"] == "0x1"  # and goes on
        assert rpc(node.url, "eth_getTransactionCount", [first["from"], "latest"]) == "0x2"
    finally:
        if node.process is not None:
            node.stop()
        broker.terminate()
        broker.wait(60)
