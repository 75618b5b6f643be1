"""What the devnet and a node both run on their host: supervised children and the gateway.

`Host` starts the children it is given (processors, proposers, workers) under one
`Supervisor`, builds the gateway over this host's own execution store (a RocksDB secondary
of the replica it runs: never another host's disk), serves JSON-RPC/REST on one port and
WebSocket on another, restarts children that die, and stops in the order that loses
nothing: stop accepting requests, flush the gateway's producer, stop the workers, the
proposers, then the processors that consume what they make.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import uvicorn
from fastapi import FastAPI

from deploy.supervisor import Supervised, Supervisor
from gateway.app import close_followers, create_app
from gateway.chainview import ChainView
from gateway.checkpointview import CheckpointView
from gateway.dagview import DagView
from gateway.market import MarketService
from processors.execution.genesis import DEV_KEYS
from streams.broker import claim_ports
from streams.kafka import Producer
from streams.settings import Settings

log = logging.getLogger(__name__)


class HostError(RuntimeError):
    """The host cannot start, or had to stop (the message says why)."""


@dataclass(frozen=True)
class ChildSpec:
    """One child process: `lattice ARGS`, under `name` (its log is `logs/<name>.log`)."""

    name: str
    args: tuple[str, ...]
    #: The kind of child, which decides the order of stopping (workers first).
    kind: str = "processor"


#: How long a stopping gateway lets requests under way finish.
GRACEFUL_S = 5

#: Children stop in this order: who makes work first, then who consumes it.
STOP_ORDER = ("worker", "proposer", "processor")


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the host (it runs two servers)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def locked(data_dir: Path, who: str) -> Iterator[None]:
    """Hold `<data-dir>/<who>.lock` while running: one process tree per data directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f"{who}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HostError(f"another {who} is running with data directory {data_dir}") from None
        yield


def check_port(host: str, port: int, flag: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            why = f"cannot listen on {host}:{port} ({exc.strerror}); pass {flag}"
            raise HostError(why) from None
    claim_ports(port)  # the gateway opens it after the children start: none may be given it


class Host:
    def __init__(self, settings: Settings, bootstrap: str, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.out = out
        self.supervisor = Supervisor()
        self.producer: Producer | None = None
        self.market: MarketService | None = None
        self.followers: list[DagView | CheckpointView] = []
        self.view: ChainView | None = None
        self.app: FastAPI | None = None
        self.stopping = threading.Event()

    @property
    def rpc(self) -> str:
        return f"http://{self.settings.host}:{self.settings.rpc_port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.settings.host}:{self.settings.ws_port}"

    def say(self, label: str, text: str) -> None:
        print(f"  {label:<11} {text}", file=self.out, flush=True)

    def start(self, children: Sequence[ChildSpec]) -> list[Supervised]:
        logs = self.settings.data_dir / "logs"
        return [
            self.supervisor.add(
                Supervised(c.name, list(c.args), logs, report=self._report, kind=c.kind)
            )
            for c in children
        ]

    def _report(self, text: str) -> None:
        self.say("process", text)

    def metrics(self) -> dict[str, str]:
        return {
            "gateway": f"{self.rpc}/metrics",
            **{
                c.name: f"http://127.0.0.1:{c.metrics_port}/metrics"
                for c in self.supervisor.children
            },
        }

    def gateway(
        self,
        execution_dir: Path,
        signers: frozenset[bytes],
        on_acknowledged: Callable[[Any, Sequence[tuple[str, bytes]]], None] | None = None,
        dev_accounts: bool = False,
    ) -> FastAPI:
        """The gateway over this host's execution store and the log (`on_acknowledged`:
        the devnet's archiver, given the gateway's records as the broker takes them;
        `dev_accounts`: JSON-RPC signs with the development mnemonic's keys)."""
        s = self.settings
        # No linger: a wallet waits for each answer, so batching only adds latency.
        self.producer = Producer(
            self.bootstrap,
            client_id=f"{s.client_id}-gateway",
            config={"linger.ms": 0, **s.kafka_config},
            on_acknowledged=on_acknowledged,
        )
        view = self.view = ChainView(execution_dir, s.chain_id)
        dag = DagView(self.bootstrap, s.chain_id, s.ghostdag_k, s.finality_depth)
        checkpoints = CheckpointView(self.bootstrap, signers)
        self.followers = [dag, checkpoints]
        self.market = MarketService(s, self.bootstrap, s.chain_id)
        self.app = create_app(
            s,
            self.producer,
            view,
            dag,
            checkpoints,
            self.market,
            processes=self.supervisor.status,
            bootstrap=self.bootstrap,
            dev_keys=DEV_KEYS if dev_accounts or s.dev_accounts else (),
        )
        return self.app

    async def serve(
        self,
        app: FastAPI,
        ready: Callable[[], None],
        checks: Sequence[tuple[Callable[[], bool], str]] = (),
    ) -> None:
        """Serve until SIGINT or SIGTERM; `ready` runs once both ports answer and the
        ledger answers state reads (`gateway.app.Readiness`). Raises
        HostError when something it cannot restart broke (`checks`: a test and what it
        means)."""
        s = self.settings
        servers = [
            _QuietServer(
                uvicorn.Config(
                    app,
                    host=s.host,
                    port=port,
                    log_level="warning",
                    lifespan="off",
                    # A request still waiting at a stop (for a broker that died, say) is
                    # cut after this: its client re-sends, and nothing it was told is lost.
                    timeout_graceful_shutdown=GRACEFUL_S,
                    # A WebSocket message is a request body (closed with 1009 beyond).
                    ws_max_size=s.max_body_bytes or sys.maxsize,
                )
            )
            for port in (s.rpc_port, s.ws_port)
        ]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(server.serve()) for server in servers]
        while not all(server.started for server in servers):
            if any(task.done() for task in tasks):
                raise HostError("the gateway failed to start (see the log above)")
            await asyncio.sleep(0.02)
        gateway_down = (lambda: any(t.done() for t in tasks), "the gateway stopped unexpectedly")
        watched = [gateway_down, *checks]
        # "ready" is promised only once the ledger answers state reads: a wallet may send
        # its first transaction the moment it is printed (anvil is usable once its port
        # opens).
        readiness = getattr(app.state, "readiness", None)
        answers = (lambda: True) if readiness is None else (lambda: bool(readiness()[0]))
        problem = await self._watch(stop, watched, until=answers)
        if problem is None and not stop.is_set():
            ready()
            problem = await self._watch(stop, watched)
        self.stopping.set()
        print("stopping...", file=self.out, flush=True)
        if problem and self.producer is not None:
            # The log broke: requests waiting for their records are answered "unavailable"
            # now (their clients send again) rather than cut at the graceful timeout.
            self.producer.abandon()
        if self.market is not None:
            self.market.stop_waiting()  # a job being waited for is on the log already
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        if problem:
            raise HostError(problem)

    async def _watch(
        self,
        stop: asyncio.Event,
        checks: Sequence[tuple[Callable[[], bool], str]],
        until: Callable[[], bool] | None = None,
    ) -> str | None:
        """Wait for a stop signal (or for `until` to hold), restarting children that die;
        why the host must stop if something broke (a check failed, or a child keeps
        failing)."""
        interval = 0.5 if until is None else 0.05
        while not stop.is_set():
            for failed, why in checks:
                if failed():
                    return why
            failing = self.supervisor.poll()
            if failing:
                return failing
            if until is not None and until():
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        return None

    def stop(self, log_lost: bool = False) -> None:
        """Close the gateway's clients, then stop the children in `STOP_ORDER`. With
        `log_lost` (the broker died under them), kill the children rather than wait for
        them to flush to a broker that is gone: what they committed is on disk, and what
        they had not is not acknowledged to anyone."""
        if self.market is not None:
            self.market.close()
        if self.app is not None:
            close_followers(self.app)
        for follower in self.followers:
            follower.close()
        if self.view is not None:
            self.view.close()
        for kind in STOP_ORDER:
            group = [c for c in self.supervisor.children if c.kind == kind]
            for child in group:
                child.kill() if log_lost else child.terminate()
            for child in group:
                child.stop()
        if self.producer is not None:
            try:
                self.producer.close(0.0 if log_lost else 30.0)
            except Exception as exc:
                log.error("producer flush failed: %s", exc)
