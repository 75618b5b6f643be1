"""The short fault run CI makes: each kind of process killed in turn under load (wallets
sending ETH and ERC-20 transfers, a user's market jobs), then the broker, then the whole
devnet, and nothing acknowledged lost or doubled, the books adding up
(`tests.faults.harness`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.devnets import Devnet
from tests.faults.harness import (
    MARKET_ENV,
    kill_broker,
    kill_child,
    kill_everything,
    run_faults,
    set_up_market,
    table,
)

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
def test_nothing_acknowledged_is_lost_or_doubled_under_faults(
    tmp_path: Path, tiny_gpt2: Path
) -> None:
    net = Devnet(
        tmp_path / "data", "--block-interval", "0.3", "--finality-depth", "3", env=MARKET_ENV
    )
    faults = [
        kill_child("execution"),
        kill_child("dag"),
        kill_child("proposer-0"),
        kill_child("matcher"),
        kill_child("verifier"),
        kill_child("worker-0"),
        kill_broker,
        kill_everything,
    ]
    try:
        net.start()
        set_up_market(net, tiny_gpt2)
        outcomes = list(run_faults(net, faults, load_s=4.0, market=True))
    finally:
        if net.process is not None:
            net.stop()
    print("\n" + table(outcomes))
    assert len(outcomes) == len(faults) + 1
    for outcome in outcomes:
        assert outcome.acknowledged > 0 and outcome.jobs > 0, table(outcomes)
        assert (outcome.lost, outcome.doubled, outcome.books) == (0, 0, ""), table(outcomes)
        if outcome.fault != "none (load only)":
            assert outcome.recovery_s is not None, table(outcomes)
