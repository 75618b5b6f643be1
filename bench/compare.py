"""One benchmark on an earlier revision and on the working tree, one after the other, in one
run, with both outputs printed side by side (the figures a change must not make worse).

    .venv/bin/python bench/compare.py REV bench_rpc.py [--transfers 1000 ...]

REV is checked out into a temporary git worktree; the benchmark then runs there, then
here, each with this checkout's virtual environment and Node tools (the revisions must
need the same packages) and its own working directory, so each side's child processes (devnets,
workers) run that side's code. Nothing else should run meanwhile: both sides share the
machine's cores, and the comparison is only as fair as the machine is quiet.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(tree: Path, bench: str, args: list[str]) -> tuple[list[str], float]:
    """The benchmark's output lines (librdkafka's log lines dropped) and its wall time."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(tree / "bench" / bench), *args],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    lines = [line for line in done.stdout.splitlines() if not line.startswith("%")]
    if done.returncode != 0:
        lines.append(f"(exit {done.returncode}) {done.stderr.strip().splitlines()[-1:]}")
    return lines, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the revision to compare with, e.g. a commit")
    parser.add_argument("bench", help="a script in bench/, e.g. bench_execution.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own flags")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        earlier = Path(tmp) / "earlier"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(earlier), options.revision],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        # The Node tools (anvil, Hardhat, solc) are installed once, in this checkout, and
        # the reference data sits beside it.
        (earlier / "node_modules").symlink_to(ROOT / "node_modules")
        if (ROOT.parent / "shared").exists():
            (Path(tmp) / "shared").symlink_to(ROOT.parent / "shared")
        try:
            before, before_s = run(earlier, options.bench, options.args)
            after, after_s = run(ROOT, options.bench, options.args)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(earlier)], cwd=ROOT, check=False
            )
    width = max((len(line) for line in before), default=0) + 2
    print(f"{options.bench} at {options.revision} ({before_s:.0f} s)".ljust(width), end="")
    print(f"| working tree ({after_s:.0f} s)")
    for left, right in itertools.zip_longest(before, after, fillvalue=""):
        print(left.ljust(width) + "| " + right)


if __name__ == "__main__":
    main()
