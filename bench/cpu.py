"""CPU seconds by process of a devnet's tree, read from /proc, for the benchmarks' "where the
CPU goes" lines (a 2-core machine is saturated well before any wait is the limit)."""

from __future__ import annotations

import os
import re


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def cpu_by_process(root: int, name: str = "devnet") -> dict[str, float]:
    """CPU seconds (user + system) so far of `root`'s process tree and of this process,
    by role: the `lattice` subcommand a child runs, `broker` for the embedded broker,
    `name` for the root (a devnet's: its gateway and archiver), `client` for this
    process."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: dict[str, float] = {}
    pending = [(root, name), (os.getpid(), "client")]
    while pending:
        pid, role = pending.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[role] = seconds.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
        if role == "client":
            continue
        for child in _children(pid):
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            named = re.search(r"deploy\.cli (\S+)", command)
            index = re.search(r"--devnet-index (\d+)", command)
            name = named.group(1) if named else "broker" if "tansu" in command else "other"
            pending.append((child, f"{name}-{index.group(1)}" if index else name))
    return seconds


def report_cpu(
    before: dict[str, float], after: dict[str, float], count: float, wall: float, unit: str = "job"
) -> None:
    """What each role spent between two `cpu_by_process` readings, per `unit` (`count` of
    them in `wall` seconds), largest first."""
    spent = {role: after[role] - before.get(role, 0.0) for role in after}
    total = sum(spent.values())
    print(
        f"    CPU: {total / wall * 100:.0f}% of a core, {total / count * 1000:.2f} ms per {unit}: "
        + ", ".join(
            f"{role} {seconds / count * 1000:.2f}"
            for role, seconds in sorted(spent.items(), key=lambda kv: -kv[1])
            if seconds / count >= 0.00001
        ),
        flush=True,
    )
