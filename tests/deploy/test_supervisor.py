"""Supervision: the back-off policy (pure), and real child processes killed, restarted,
and given up on when they keep failing."""

from __future__ import annotations

import os
import signal
import subprocess
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


#: A child that takes the runtime's signal handling and then never finishes stopping (as
#: a flush waiting on an archive that died with the devnet).
STUCK = (
    sys.executable,
    "-c",
    "import time\nfrom processors.runtime import stop_on_signals\nstop_on_signals()\n"
    "print('ready', flush=True)\nwhile True: time.sleep(1)",
)


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_child_whose_supervisor_died_exits_however_its_stop_goes(tmp_path: Path) -> None:
    """The kernel's parent-death signal reaches a child whose supervisor was killed; a
    child stuck stopping then exits within the runtime's grace. A child told to stop by a
    living supervisor is left to finish its stop."""
    from processors.runtime import ORPHAN_EXIT_S

    script = (
        "import sys, time\nfrom pathlib import Path\n"
        "from deploy.supervisor import Backoff, Supervised\n"
        f"child = Supervised('stuck', [], Path(sys.argv[1]), Backoff(), print, {STUCK!r})\n"
        "Path(sys.argv[2]).write_text(str(child.pid))\ntime.sleep(120)\n"
    )
    pid_file = tmp_path / "child.pid"
    supervisor = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(pid_file)])
    try:
        wait_for(lambda: pid_file.exists() and "ready" in (tmp_path / "stuck.log").read_text())
        orphan = int(pid_file.read_text())
        supervisor.kill()
        supervisor.wait()
        wait_for(lambda: gone(orphan), timeout=ORPHAN_EXIT_S + 5)
    finally:
        supervisor.kill()
    kept = Supervised("stuck", [], tmp_path / "kept", Backoff(), lambda _: None, STUCK)
    try:
        assert kept.pid is not None
        wait_for(lambda: "ready" in (tmp_path / "kept" / "stuck.log").read_text())
        os.kill(kept.pid, signal.SIGTERM)
        time.sleep(ORPHAN_EXIT_S + 1)
        assert kept.running  # its supervisor lives: no deadline but its own
    finally:
        if kept.pid is not None:
            os.kill(kept.pid, signal.SIGKILL)
        kept.stop()
