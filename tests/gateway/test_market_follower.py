"""The gateway's market view: job records in whatever order the job topics deliver them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.market import FOLLOWED, MAX_EARLY_JOBS, MarketService
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.settings import CHAIN_ID, Settings

SUBMITTED = "lattice.jobs.JobSubmitted"
ASSIGNED = "lattice.jobs.JobAssigned"
RESULT = "lattice.jobs.JobResult"


@pytest.fixture
def market(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[MarketService]:
    ensure_topics(broker.bootstrap, FOLLOWED)
    service = MarketService(Settings(data_dir=tmp_path), broker.bootstrap, CHAIN_ID)
    yield service
    service.close()


def test_records_that_overtake_their_submission_are_kept(market: MarketService) -> None:
    job = b"\x01" * 32
    # The matcher answers within milliseconds; the follower may read jobs.assigned first.
    market.apply(ASSIGNED, {"job_id": job, "attempt": 0, "nodes": [b"\xaa" * 20]})
    market.apply(ASSIGNED, {"job_id": job, "attempt": 1, "nodes": [b"\xbb" * 20]})
    assert job not in market.jobs
    market.apply(SUBMITTED, {"job_id": job})
    market.apply(RESULT, {"job_id": job, "node": b"\xbb" * 20})
    status = market.jobs[job]
    assert [a["attempt"] for a in status.assignments] == [0, 1]
    assert status.state == "completed"


def test_records_of_jobs_never_submitted_stay_bounded(market: MarketService) -> None:
    for n in range(MAX_EARLY_JOBS + 5):
        market.apply(ASSIGNED, {"job_id": n.to_bytes(32, "big"), "attempt": 0, "nodes": []})
    assert len(market._early) == MAX_EARLY_JOBS
    assert (0).to_bytes(32, "big") not in market._early  # the oldest went first
