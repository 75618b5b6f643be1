"""Supervision: the back-off policy (pure), and real child processes killed, restarted,
and given up on when they keep failing."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from deploy.supervisor import Backoff, Supervised, Supervisor, exit_reason

SLEEPER = (sys.executable, "-c", "import time; time.sleep(120)")
FAILING = (sys.executable, "-c", "import sys; print('boom: no such thing'); sys.exit(3)")


def test_the_wait_doubles_up_to_its_cap_and_old_failures_are_forgiven() -> None:
    policy = Backoff(first_s=0.5, max_s=4.0, window_s=60.0, max_failures=10)
    waits = [policy.delay([0.0] * n, now=1.0) for n in range(1, 7)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay([0.0, 1.0, 2.0], now=100.0) == 0.0
    assert policy.delay([0.0, 50.0], now=100.0) == 0.5


def test_it_gives_up_only_after_enough_recent_failures() -> None:
    policy = Backoff(window_s=60.0, max_failures=3)
    assert not policy.gives_up([10.0, 20.0], now=30.0)
    assert policy.gives_up([10.0, 20.0, 30.0], now=30.0)
    assert not policy.gives_up([10.0, 20.0, 80.0], now=80.0)


def test_exit_reasons_name_the_signal() -> None:
    assert exit_reason(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_reason(1) == "exit 1"


def wait_for(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_killed_child_is_restarted_on_its_metrics_port(tmp_path: Path) -> None:
    said: list[str] = []
    child = Supervised("sleeper", [], tmp_path, Backoff(first_s=0.2), said.append, SLEEPER)
    try:
        first, port = child.pid, child.metrics_port
        assert first is not None and child.status()["state"] == "running"
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: (child.poll(), child.state == "restarting")[1])
        assert child.last_exit == "killed by SIGKILL"
        wait_for(lambda: (child.poll(), child.state == "running")[1])
        assert child.pid not in (None, first) and child.metrics_port == port
        assert child.status() == {
            "name": "sleeper",
            "state": "running",
            "pid": child.pid,
            "restarts": 1,
            "lastExit": "killed by SIGKILL",
        }
        assert any("killed by SIGKILL; restarting in 0.2s" in s for s in said), said
        assert any("restarted (restart 1" in s for s in said), said
    finally:
        child.stop()
    assert child.state == "stopped" and not child.running
    child.poll()
    assert child.state == "stopped" and child.pid is None


def test_a_child_that_keeps_failing_is_given_up_with_its_last_words(tmp_path: Path) -> None:
    supervisor = Supervisor()
    policy = Backoff(first_s=0.01, max_failures=3)
    child = supervisor.add(Supervised("broken", [], tmp_path, policy, lambda _: None, FAILING))
    deadline = time.monotonic() + 20
    problem = None
    while problem is None:
        assert time.monotonic() < deadline, child.status()
        problem = supervisor.poll()
        time.sleep(0.02)
    assert child.state == "failed" and child.restarts == 2
    assert child.last_exit == "exit 3: boom: no such thing"
    assert problem.startswith("broken keeps failing (exit 3: boom: no such thing; see ")
    assert supervisor.status()[0]["state"] == "failed"
