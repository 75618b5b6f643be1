"""Child processes kept running: restarted with back-off when they die, given up on when
they keep dying.

A devnet or a node runs its processors, proposers and workers as children. Each is safe to
restart at any time (state and input offsets are committed together, and the proposers hold
back what is not on the log yet), so a child that dies is started again instead of taking
the others down. One that dies `Backoff.max_failures` times within `Backoff.window_s` is
failing for a reason a restart will not fix (a bad setting, a full disk): it is left
stopped and its owner stops too, saying why.

`Backoff` is the policy (a pure function of the exit times); `Supervised` is one child, the
process it runs and its state; `Supervisor` polls them all.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from streams.broker import SUPERVISOR_ENV, die_with_parent, free_port

log = logging.getLogger(__name__)

State = Literal["running", "restarting", "failed", "stopped"]


@dataclass(frozen=True)
class Backoff:
    """How long to wait before restarting a child, and when to stop trying."""

    #: The wait after a first failure; each further recent failure doubles it.
    first_s: float = 0.5
    max_s: float = 30.0
    #: Failures older than this are forgiven.
    window_s: float = 60.0
    #: This many failures within the window and the child is given up on.
    max_failures: int = 5

    def recent(self, exits: Sequence[float], now: float) -> list[float]:
        return [t for t in exits if now - t <= self.window_s]

    def gives_up(self, exits: Sequence[float], now: float) -> bool:
        return len(self.recent(exits, now)) >= self.max_failures

    def delay(self, exits: Sequence[float], now: float) -> float:
        """The wait before the next start, after the exits at `exits` (monotonic times)."""
        count = len(self.recent(exits, now))
        if count == 0:
            return 0.0
        return float(min(self.max_s, self.first_s * 2.0 ** (count - 1)))


def exit_reason(code: int) -> str:
    """`exit 1`, or `killed by SIGKILL` for a child ended by a signal."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def last_line(path: Path, limit: int = 4096) -> str:
    """The last non-empty line of a log file (where a traceback names its error)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - limit))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1] if lines else ""


#: What a child runs, before its arguments: the `lattice` command line.
LATTICE = (sys.executable, "-m", "deploy.cli")


class Supervised:
    """One child: `lattice ARGS`, logging to `<log_dir>/<name>.log` and serving its
    /metrics on a port it keeps across restarts (so scrapers need no new address)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_dir: Path,
        backoff: Backoff = Backoff(),
        report: Callable[[str], None] | None = None,
        program: Sequence[str] = LATTICE,
        kind: str = "processor",
    ) -> None:
        self.name = name
        self.kind = kind
        self.command = [*program, *args]
        self.metrics_port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.backoff = backoff
        self.report = report or log.warning
        log_dir.mkdir(parents=True, exist_ok=True)
        self.state: State = "stopped"
        self.restarts = 0
        self.last_exit: str | None = None
        self._exits: list[float] = []
        self._restart_at = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        self._spawn()

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
                env={
                    **os.environ,
                    "LATTICE_METRICS_PORT": str(self.metrics_port),
                    SUPERVISOR_ENV: str(os.getpid()),
                },
            )
        self.state = "running"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.running else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def poll(self, now: float | None = None) -> None:
        """Notice an exit (and schedule the restart, or give up), or restart when due."""
        now = time.monotonic() if now is None else now
        if self.state == "running" and not self.running:
            assert self.process is not None
            why = exit_reason(self.process.returncode)
            detail = last_line(self.log_path)
            self.last_exit = f"{why}: {detail}" if detail else why
            self._exits = [*self.backoff.recent(self._exits, now), now]
            if self.backoff.gives_up(self._exits, now):
                self.state = "failed"
                self.report(
                    f"{self.name} {self.last_exit}; {len(self._exits)} failures in "
                    f"{self.backoff.window_s:.0f}s, not restarting (see {self.log_path})"
                )
                return
            wait = self.backoff.delay(self._exits, now)
            self.state = "restarting"
            self._restart_at = now + wait
            self.report(f"{self.name} {self.last_exit}; restarting in {wait:.1f}s")
        elif self.state == "restarting" and now >= self._restart_at:
            self.restarts += 1
            self._spawn()
            self.report(f"{self.name} restarted (restart {self.restarts}, pid {self.pid})")

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM), and restart it no more."""
        self.state = "stopped"
        if self.running:
            assert self.process is not None
            self.process.terminate()

    def kill(self) -> None:
        """SIGKILL it, and restart it no more."""
        self.state = "stopped"
        if self.running:
            assert self.process is not None
            self.process.kill()

    def stop(self, timeout: float = 20.0) -> None:
        self.terminate()
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in %ss; killing it", self.name, timeout)
            self.process.kill()
            self.process.wait()

    def status(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "lastExit": self.last_exit,
        }


class Supervisor:
    """The children of one devnet or node, polled together."""

    def __init__(self) -> None:
        self.children: list[Supervised] = []

    def add(self, child: Supervised) -> Supervised:
        self.children.append(child)
        return child

    def poll(self) -> str | None:
        """Restart what died; why the owner must stop, if a child is failing."""
        now = time.monotonic()
        for child in self.children:
            child.poll(now)
        for child in self.children:
            if child.state == "failed":
                return f"{child.name} keeps failing ({child.last_exit}; see {child.log_path})"
        return None

    def status(self) -> list[dict[str, object]]:
        return [child.status() for child in self.children]
