"""The short fault run CI makes: each kind of process killed in turn under load, then the
whole devnet, and nothing acknowledged lost or doubled (`tests.faults.harness`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.devnets import Devnet
from tests.faults.harness import kill_broker, kill_child, kill_everything, run_faults, table

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(600)
def test_nothing_acknowledged_is_lost_or_doubled_under_faults(tmp_path: Path) -> None:
    net = Devnet(tmp_path / "data", "--block-interval", "0.3", "--finality-depth", "3")
    faults = [
        kill_child("execution"),
        kill_child("dag"),
        kill_child("proposer-0"),
        kill_broker,
        kill_everything,
        kill_everything,
    ]
    try:
        net.start()
        outcomes = list(run_faults(net, faults, load_s=6.0))
    finally:
        if net.process is not None:
            net.stop()
    print("\n" + table(outcomes))
    assert len(outcomes) == len(faults) + 1
    for outcome in outcomes:
        assert outcome.acknowledged > 0, table(outcomes)
        assert (outcome.lost, outcome.doubled, outcome.books) == (0, 0, ""), table(outcomes)
        if outcome.fault != "none (load only)":
            assert outcome.recovery_s is not None, table(outcomes)
