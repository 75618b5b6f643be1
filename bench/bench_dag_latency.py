"""Block-to-ordered latency of a running devnet, with 2 and with 8 proposers.

    .venv/bin/python bench/bench_dag_latency.py [--seconds 30] [--interval 0.5] [--proposers 2 8]

Starts `lattice devnet` (embedded broker, real proposers and DAG processor processes),
follows `lattice.blocks.ordered` live, and for every DAG block it orders measures the time
from the block's own timestamp (when its proposer made it) to the moment its chain block
reached this reader. The finality rule (a chain block is final once buried `finality_depth`
blue score deep) is most of it, so the figures are printed beside that floor.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from schemas.events import BlockOrdered
from streams.broker import free_port
from streams.kafka import Reader


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(proposers: int, seconds: float, interval: float, depth: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        log = open(Path(tmp) / "devnet.log", "wb")  # noqa: SIM115
        devnet = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy.cli",
                "devnet",
                "--data-dir",
                str(data_dir),
                "--rpc-port",
                str(free_port()),
                "--ws-port",
                str(free_port()),
                "--proposers",
                str(proposers),
                "--block-interval",
                str(interval),
                "--finality-depth",
                str(depth),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            while not (data_dir / "devnet.json").exists():
                if devnet.poll() is not None:
                    raise RuntimeError((Path(tmp) / "devnet.log").read_text())
                time.sleep(0.1)
            kafka = json.loads((data_dir / "devnet.json").read_text())["kafka"]
            reader = Reader(kafka, client_id="bench-latency")
            reader.assign({("lattice.blocks.ordered", 0): 0})
            latencies: list[float] = []
            chain_blocks = reds = 0
            start = time.monotonic()
            warmup = start + 5  # proposer start-up and first finality are not steady state
            while time.monotonic() - start < seconds + 5:
                message = reader.poll_raw(0.2)
                if message is None or message.error() is not None:
                    continue
                now_ms = time.time() * 1000
                value = reader.codec.decode_as(message.value(), BlockOrdered)
                if time.monotonic() < warmup:
                    continue
                chain_blocks += 1
                reds += len(value.mergeset_reds)
                # The chain block's own timestamp; its mergeset blocks were made earlier.
                latencies.append(now_ms - value.timestamp_ms)
            reader.close()
        finally:
            devnet.send_signal(signal.SIGTERM)
            devnet.wait(60)
            log.close()
    if not latencies:
        print(f"  {proposers} proposers: no chain block became final")
        return
    print(
        f"  {proposers} proposers  chain blocks {chain_blocks:>4} ({chain_blocks / seconds:.1f}/s)"
        f"  latency ms p50 {statistics.median(latencies):>7,.0f}"
        f"  p90 {percentile(latencies, 0.9):>7,.0f}  p99 {percentile(latencies, 0.99):>7,.0f}"
        f"  max {max(latencies):>7,.0f}  reds {reds}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--finality-depth", type=int, default=10)
    parser.add_argument("--proposers", type=int, nargs="+", default=[2, 8])
    args = parser.parse_args()
    print(
        f"devnet block-to-ordered latency: each proposer every {args.interval}s, "
        f"finality depth {args.finality_depth} blue score, {args.seconds:.0f}s measured"
    )
    for n in args.proposers:
        floor = args.finality_depth * args.interval / n
        print(
            f"  (floor for {n} proposers: ~{floor * 1000:,.0f} ms of burial at "
            f"{n / args.interval:.0f} blocks/s)"
        )
        run(n, args.seconds, args.interval, args.finality_depth)


if __name__ == "__main__":
    main()
