"""GHOSTDAG core speed and memory on Kaspa's K=18 simulation topologies.

    .venv/bin/python bench/bench_ghostdag.py [--sizes 12 13 14] [--no-naive]

For each topology (attack / no-attack, 2^12, 2^13, 2^14 blocks) it colours every block with
the real index (`processors.dag.reachability`: jump pointers + mergers) and, in the same run,
with the naive index that stores every block's past (`processors.dag.naive`). Each
measurement runs in a fresh process so its peak memory (max RSS) is its own; the figure
includes the interpreter and the loaded topology, shown separately as "base".
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TOPOLOGIES = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "ghostdag" / "topologies"
)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(path: str, naive: bool) -> None:
    from processors.dag.ghostdag import Ghostdag
    from processors.dag.naive import PastSets
    from processors.dag.vectors import id_hash

    with gzip.open(path) as f:
        document = json.load(f)
    blocks = [(id_hash(b["id"]), [id_hash(p) for p in b["parents"]]) for b in document]
    genesis = blocks[0][0]
    base = rss_mb()
    dag = Ghostdag(genesis, 18, reachability=PastSets(genesis) if naive else None)
    start = time.perf_counter()
    reds = 0
    for block, parents in blocks[1:]:
        reds += len(dag.add(block, parents).mergeset_reds)
    elapsed = time.perf_counter() - start
    print(
        json.dumps({"blocks": len(blocks) - 1, "seconds": elapsed, "reds": reds, "base_mb": base})
    )


def measure(path: Path, naive: bool) -> dict[str, float]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", str(path)] + (["--naive"] if naive else []),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"benchmark child failed on {path.name}")
    result: dict[str, float] = json.loads(output)
    result["peak_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[12, 13, 14])
    parser.add_argument("--no-naive", action="store_true", help="skip the naive peer")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.naive)
        return
    print(
        f"{'topology':<28}{'impl':<8}{'blocks':>8}{'blocks/s':>12}{'peak MB':>10}"
        f"{'base MB':>9}{'reds':>7}"
    )
    for shape in ("noattack", "attack"):
        for exponent in args.sizes:
            path = TOPOLOGIES / f"{shape}-dag-blocks--2^{exponent}-delay-factor--1-k--18.json.gz"
            for naive in [False] if args.no_naive else [False, True]:
                r = measure(path, naive)
                print(
                    f"{shape + ' 2^' + str(exponent):<28}{'naive' if naive else 'lattice':<8}"
                    f"{int(r['blocks']):>8}{r['blocks'] / r['seconds']:>12,.0f}"
                    f"{r['peak_mb']:>10,.0f}{r['base_mb']:>9,.0f}{int(r['reds']):>7}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
