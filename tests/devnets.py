"""`lattice devnet` run as a user runs it, for the end-to-end and fault tests: a real
process in its own process group, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from hexbytes import HexBytes
from web3 import Web3
from web3.types import TxReceipt

from streams.broker import free_port

LATTICE = [sys.executable, "-m", "deploy.cli"]


class Devnet:
    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra = list(extra)
        self.env = env or {}
        self.rpc_port, self.ws_port = free_port(), free_port()
        self.log = data_dir.parent / f"devnet-{self.rpc_port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        #: Where this start's output begins in the log: a restart appends to it, so the
        #: earlier runs' output (a traceback before a fault) is still there to read.
        self._since = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    def start(self) -> None:
        self._since = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
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
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                start_new_session=True,  # its own process group, as in a terminal
            )
        deadline = time.monotonic() + 60
        while "ready" not in self.output():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def wait_set_up(self, timeout: float = 120) -> None:
        """Until the devnet's own first transactions (dev account 0's deposit and API key)
        are executed: tests sending from account 0 would otherwise race them for nonces."""
        deadline = time.monotonic() + timeout
        while not (self.data_dir / "api-key").exists():
            assert self.process is not None and self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)

    def output(self) -> str:
        """What this start of the devnet has printed so far."""
        return self._read()[self._since :].decode(errors="replace")

    def history(self) -> str:
        """What every start of the devnet has printed."""
        return self._read().decode(errors="replace")

    def _read(self) -> bytes:
        return self.log.read_bytes() if self.log.exists() else b""

    def stop(self, sig: int = signal.SIGTERM, group: bool = False) -> int:
        """Signal the devnet (with `group`, its whole process group, as Ctrl-C in a terminal
        or a service manager does) and wait for its exit code."""
        assert self.process is not None
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        code = self.process.wait(60)
        self.process = None
        return code

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LATTICE, *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )

    def tail(
        self, topic: str = "lattice.tx.submitted", sender: str | None = None
    ) -> list[dict[str, Any]]:
        result = self.cli("tail", topic, "-n", "-1")
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in result.stdout.splitlines()]
        return [r for r in records if sender is None or r["key"] == sender.lower()]


def rpc(url: str, method: str, params: list[Any] | None = None) -> Any:
    answer = httpx.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
    ).json()
    assert "error" not in answer, answer
    return answer["result"]


def receipt(url: str, tx: str, timeout: float = 90) -> dict[str, Any]:
    """A transaction's receipt at `url`, waited for."""
    deadline = time.monotonic() + timeout
    while (found := rpc(url, "eth_getTransactionReceipt", [tx])) is None:
        assert time.monotonic() < deadline, f"no receipt for {tx} at {url}"
        time.sleep(0.3)
    return dict(found)


def final_receipt(url: str, tx: str, timeout: float = 90) -> dict[str, Any]:
    """The receipt once its block is final there (`safe`): an optimistic one may still
    move with a reorganisation, and two nodes may be at different optimistic heads."""
    deadline = time.monotonic() + timeout
    while True:
        found = receipt(url, tx, timeout)
        # Read again once final: a reorganisation between the two reads may have moved it.
        if int(found["blockNumber"], 16) <= safe(url) and receipt(url, tx, timeout) == found:
            return found
        assert time.monotonic() < deadline, f"{tx} not final at {url}"
        time.sleep(0.3)


def settled(w3: Web3, tx_hash: HexBytes, timeout: float = 90) -> TxReceipt:
    """`final_receipt` through web3: what a test reads after a receipt (its block, logs,
    traces) stays put only once the block is final."""
    deadline = time.monotonic() + timeout
    while True:
        left = max(1.0, deadline - time.monotonic())
        found = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=left, poll_latency=0.1)
        final = found["blockNumber"] <= w3.eth.get_block("safe")["number"]
        if final and w3.eth.get_transaction_receipt(tx_hash) == found:
            return found
        assert time.monotonic() < deadline, f"0x{tx_hash.hex()} not final"
        time.sleep(0.1)


def safe(url: str) -> int:
    """The number of the last final block at `url`."""
    return int(rpc(url, "eth_getBlockByNumber", ["safe", False])["number"], 16)
