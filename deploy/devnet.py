"""`lattice devnet`: the whole network on one machine.

Start-up: lock the data directory, start the embedded broker (unless `--kafka`), create
the catalogue's topics, re-seed the broker from the archive, start archiving, then the
processors and the gateway; write `devnet.json` and print the endpoints.

Shutdown (Ctrl-C or SIGTERM), in the order that loses nothing: stop accepting requests,
flush the producer, stop processors, let the archiver catch up with every partition's
end, stop the broker, remove `devnet.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import uvicorn
import uvloop
from fastapi import FastAPI

from deploy import endpoints
from deploy.supervisor import Supervised, Supervisor
from gateway.app import create_app
from gateway.chainview import ChainView
from gateway.checkpointview import CheckpointView
from gateway.dagview import DagView
from gateway.market import MarketService
from streams.admin import ensure_topics
from streams.archive import Archiver, TopicArchive
from streams.broker import EmbeddedBroker
from streams.kafka import Producer, Reader
from streams.settings import Settings
from streams.topics import TOPICS

log = logging.getLogger(__name__)


class DevnetError(RuntimeError):
    """The devnet cannot start or had to stop."""


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the devnet (it runs two servers)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "devnet.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DevnetError(f"another devnet is running with data directory {data_dir}") from None
        yield


def _check_port(host: str, port: int, flag: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DevnetError(
                f"cannot listen on {host}:{port} ({exc.strerror}); pass {flag}"
            ) from None


class Devnet:
    def __init__(self, settings: Settings, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.out = out
        self.broker: EmbeddedBroker | None = None
        self.archiver: Archiver | None = None
        self.producer: Producer | None = None
        self.supervisor = Supervisor()
        self.proposers: list[Supervised] = []
        self.processors: list[Supervised] = []
        self.workers: list[Supervised] = []
        self.market: MarketService | None = None
        self.followers: list[DagView | CheckpointView] = []  # the gateway's other readers
        self.view: ChainView | None = None
        self.stopping = threading.Event()

    def say(self, label: str, text: str) -> None:
        print(f"  {label:<11} {text}", file=self.out, flush=True)

    def _child(self, name: str, args: list[str]) -> Supervised:
        """A supervised child, logging to `<data-dir>/logs/<name>.log`."""
        logs = self.settings.data_dir / "logs"
        return self.supervisor.add(Supervised(name, args, logs, report=self._report))

    def _report(self, text: str) -> None:
        self.say("process", text)

    def run(self) -> None:
        s = self.settings
        with _locked(s.data_dir):
            _check_port(s.host, s.rpc_port, "--rpc-port")
            _check_port(s.host, s.ws_port, "--ws-port")
            print("lattice devnet", file=self.out, flush=True)
            self.say("data dir", str(s.data_dir))
            try:
                bootstrap = self._start_log()
                self._start_processors(bootstrap)
                # No linger: a wallet waits for each answer, so batching only adds latency.
                self.producer = Producer(
                    bootstrap,
                    client_id=f"{s.client_id}-gateway",
                    config={"linger.ms": 0, **s.kafka_config},
                )
                view = self.view = ChainView(s.data_dir / "lattice-execution", s.chain_id)
                dag = DagView(bootstrap, s.chain_id, s.ghostdag_k, s.finality_depth)
                checkpoints = CheckpointView(bootstrap, s.replicas)
                self.followers = [dag, checkpoints]
                self.market = MarketService(s, bootstrap, s.chain_id)
                app = create_app(
                    s,
                    self.producer,
                    view,
                    dag,
                    checkpoints,
                    self.market,
                    processes=self.supervisor.status,
                )
                # uvloop: the gateway's event loop is on every request's path.
                uvloop.run(self._serve(app, bootstrap))
            finally:
                self._stop()

    def _start_log(self) -> str:
        s = self.settings
        if s.embedded:
            self.broker = EmbeddedBroker(
                port=s.broker_port,
                log_file=s.data_dir / "broker.log",
                start_timeout=s.broker_start_timeout,
            ).start()
            bootstrap = self.broker.bootstrap
            self.say("kafka", f"{bootstrap} (embedded tansu, memory storage)")
        else:
            bootstrap = str(s.kafka)
            self.say("kafka", f"{bootstrap} (external cluster)")
        created = ensure_topics(
            bootstrap, TOPICS, replication=s.replication_factor, extra=s.kafka_config
        )
        self.say("topics", f"{len(TOPICS)} in the catalogue, {len(created)} created")
        if s.embedded:
            archive = TopicArchive(s.data_dir / "archive")
            seeder = Producer(bootstrap, client_id=f"{s.client_id}-reseed")
            reader = Reader(bootstrap, client_id=f"{s.client_id}-reseed")
            try:
                count = archive.reseed(seeder, reader, TOPICS, progress=self._reseed_progress)
            finally:
                seeder.close()
                reader.close()
            self.say("archive", f"{s.data_dir / 'archive'} ({count} records re-seeded)")
            self.archiver = Archiver(archive, bootstrap, TOPICS)
            self.archiver.start()
        return bootstrap

    def _start_processors(self, bootstrap: str) -> None:
        s = self.settings
        common = [
            "--kafka",
            bootstrap,
            "--data-dir",
            str(s.data_dir),
            "--ghostdag-k",
            str(s.ghostdag_k),
            "--finality-depth",
            str(s.finality_depth),
        ]
        logs = s.data_dir / "logs"
        self.processors.append(self._child("dag", ["dag", "run", *common]))
        genesis = ["--genesis", str(s.genesis_file)] if s.genesis_file else []
        for index in range(s.replicas):
            # Replica 0 publishes the ledger's events; the others only sign checkpoints.
            group = "lattice-execution" if index == 0 else f"lattice-execution-{index}"
            extra = [] if index == 0 else ["--no-publish"]
            self.processors.append(
                self._child(
                    group.removeprefix("lattice-"),
                    [
                        "execution",
                        "run",
                        "--kafka",
                        bootstrap,
                        "--data-dir",
                        str(s.data_dir),
                        "--group-id",
                        group,
                        "--replica-index",
                        str(index),
                        "--checkpoint-every",
                        str(s.checkpoint_every),
                        *genesis,
                        *extra,
                    ],
                )
            )
        for index in range(s.proposers):
            self.proposers.append(
                self._child(
                    f"proposer-{index}",
                    [
                        "proposer",
                        "--devnet-index",
                        str(index),
                        "--block-interval",
                        str(s.block_interval),
                        *common,
                    ],
                )
            )
        market = ["--kafka", bootstrap, "--data-dir", str(s.data_dir)]
        self.processors.append(self._child("matcher", ["matcher", "run", *market]))
        self.processors.append(self._child("verifier", ["verifier", "run", *market]))
        self.processors.append(self._child("analytics", ["analytics", "run", *market]))
        self.say(
            "processors",
            f"analytics (DuckDB), matcher, verifier, execution (py-evm), dag ordering "
            f"(K={s.ghostdag_k}, finality depth {s.finality_depth}), "
            f"{s.proposers} proposers every {s.block_interval}s; "
            f"logs in {logs}",
        )

    def _start_workers(self, bootstrap: str, rpc: str) -> None:
        s = self.settings
        for index in range(s.workers):
            args = ["worker", "--kafka", bootstrap, "--data-dir", str(s.data_dir), "--rpc", rpc]
            args += ["--devnet-index", str(index)]
            self.workers.append(self._child(f"worker-{index}", args))
        self.say("workers", f"{s.workers} local (OpenAI-compatible API at {rpc}/v1)")

    def _dev_api_key(self, rpc: str) -> None:
        """Give dev account 0 a deposit and an API key, once per data directory."""
        from gateway.market import new_api_key
        from processors.execution.genesis import DEV_KEYS, ETHER, JOB_MARKET, address_of
        from processors.market.chain import authorise_call, deposit_call
        from processors.market.client import RpcFailure, send_call

        path = self.settings.data_dir / "api-key"
        if path.exists():
            self.say("api key", f"{path.read_text().strip()} (dev account 0, {path})")
            return
        account = bytes.fromhex(DEV_KEYS[0][2:])
        delegate = os.urandom(32)
        chain = self.settings.chain_id
        try:
            send_call(
                rpc, chain, account, JOB_MARKET, deposit_call(), value=100 * ETHER, wait_s=None
            )
            send_call(
                rpc, chain, account, JOB_MARKET, authorise_call(address_of(delegate)), wait_s=120
            )
        except RpcFailure as exc:
            if self.stopping.is_set():  # stopped before the set-up finished: next start does it
                log.info("dev API key not set up: the devnet stopped first")
            else:
                log.error("could not set up the dev API key: %s", exc)
            return
        key = new_api_key(delegate)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(key + "\n")
        os.replace(tmp, path)
        self.say("api key", f"{key} (dev account 0, 100 ETH deposit; saved in {path})")

    def _reseed_progress(self, topic: str, count: int) -> None:
        self.say("re-seeded", f"{topic}: {count} records")

    async def _serve(self, app: FastAPI, bootstrap: str) -> None:
        s = self.settings
        servers = [
            _QuietServer(
                uvicorn.Config(
                    app,
                    host=s.host,
                    port=port,
                    log_level="warning",
                    lifespan="off",
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
                raise DevnetError("the gateway failed to start (see the log above)")
            await asyncio.sleep(0.02)
        rpc = f"http://{s.host}:{s.rpc_port}"
        self._start_workers(bootstrap, rpc)
        endpoints.Endpoints(
            pid=os.getpid(),
            kafka=bootstrap,
            embedded=s.embedded,
            rpc=rpc,
            ws=f"ws://{s.host}:{s.ws_port}",
            chain_id=s.chain_id,
            metrics={
                "gateway": f"{rpc}/metrics",
                **{
                    c.name: f"http://127.0.0.1:{c.metrics_port}/metrics"
                    for c in self.processors + self.proposers + self.workers
                },
            },
        ).write(s.data_dir)
        self.say("REST", f"{rpc}/v1  (POST /v1/transactions, GET /health)")
        self.say("JSON-RPC", rpc)
        self.say("WebSocket", f"ws://{s.host}:{s.ws_port}")
        self.say("dashboard", f"{rpc}/  (metrics: {rpc}/metrics; processors' in devnet.json)")
        self.say("chain id", str(s.chain_id))
        print("ready; Ctrl-C to stop", file=self.out, flush=True)
        threading.Thread(target=self._dev_api_key, args=(rpc,), daemon=True).start()
        problem = await self._watch(stop, tasks)
        self.stopping.set()
        print("stopping...", file=self.out, flush=True)
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        if problem:
            raise DevnetError(problem)

    async def _watch(self, stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> str | None:
        """Wait for a stop signal, restarting children that die; return why the devnet must
        stop if something broke (the gateway, the broker or the archiver, or a child that
        keeps failing)."""
        checks: list[tuple[Callable[[], bool], str]] = [
            (lambda: any(t.done() for t in tasks), "the gateway stopped unexpectedly"),
        ]
        if self.broker is not None:
            broker = self.broker
            checks.append((lambda: not broker.running, "the embedded broker exited"))
        if self.archiver is not None:
            archiver = self.archiver
            checks.append((lambda: archiver.failed is not None, "archiving failed"))
        while not stop.is_set():
            for failed, why in checks:
                if failed():
                    return why
            failing = self.supervisor.poll()
            if failing:
                return failing
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        return None

    def _stop(self) -> None:
        s = self.settings
        endpoints.remove(s.data_dir)
        # Workers and producers of blocks first, then the processors that consume them.
        if self.market is not None:
            self.market.close()
        for follower in self.followers:
            follower.close()
        if self.view is not None:
            self.view.close()
        for group in (self.workers, self.proposers, self.processors):
            for child in group:
                child.terminate()
            for child in group:
                child.stop()
        if self.producer is not None:
            try:
                self.producer.close()
            except Exception as exc:
                log.error("producer flush failed: %s", exc)
        if self.archiver is not None:
            try:
                if self.broker is not None and self.broker.running:
                    self.archiver.drain()
            finally:
                self.archiver.stop()
            total = sum(self.archiver.archive.counts(TOPICS).values())
            self.say("archived", f"{total} records in {s.data_dir / 'archive'}")
        if self.broker is not None:
            self.broker.stop()
        print("stopped", file=self.out, flush=True)
