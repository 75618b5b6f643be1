"""The long fault run: a devnet under load (wallets sending ETH and ERC-20 transfers, a
user's market jobs on the devnet's worker), every kind of process SIGKILLed in turn, then
the broker, then the whole devnet, several rounds; the books checked after each fault and
the table printed (`tests/faults/harness.py` says what is checked).

    .venv/bin/python bench/bench_faults.py [--rounds 3] [--load-s 20] [--block-interval 1]
        [--no-market]

The model the jobs run is the tiny GPT-2 the tests build locally (`tests/tiny_models.py`).

CI runs the short version (`tests/faults/test_faults.py`). Nothing is asserted here: the
table is the result (it belongs in docs/reliability.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.devnets import Devnet
from tests.faults.harness import (
    MARKET_ENV,
    Fault,
    kill_broker,
    kill_child,
    kill_everything,
    run_faults,
    set_up_market,
    table,
)
from tests.tiny_models import build_tiny_gpt2

#: Every kind of child the default devnet runs, then the devnet itself.
VICTIMS = (
    "execution",
    "dag",
    "proposer-0",
    "proposer-1",
    "matcher",
    "verifier",
    "analytics",
    "worker-0",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load-s", type=float, default=20.0)
    parser.add_argument("--block-interval", default="1")
    parser.add_argument("--no-market", action="store_true", help="transfers only, no jobs")
    args = parser.parse_args()
    market = not args.no_market
    faults: list[Fault] = []
    for _ in range(args.rounds):
        faults += [kill_child(name) for name in VICTIMS if market or name != "worker-0"]
        faults += [kill_broker, kill_everything]
    with tempfile.TemporaryDirectory() as tmp:
        net = Devnet(Path(tmp) / "data", "--block-interval", args.block_interval, env=MARKET_ENV)
        started = time.monotonic()
        try:
            net.start()
            if market:
                print("importing the tiny GPT-2 the jobs run", flush=True)
                set_up_market(net, build_tiny_gpt2(Path(tmp) / "model"))
            outcomes = []
            for outcome in run_faults(net, faults, load_s=args.load_s, market=market):
                outcomes.append(outcome)
                print(table(outcomes[-1:]).splitlines()[-1], flush=True)
        finally:
            if net.process is not None:
                net.stop()
    print(f"\n{len(faults)} faults in {time.monotonic() - started:.0f} s\n")
    print(table(outcomes))


if __name__ == "__main__":
    main()
