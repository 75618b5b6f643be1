"""The gateway's market view: job records in whatever order the job topics deliver them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.market import FOLLOWED, HOLD_GRACE_MS, MAX_EARLY_JOBS, MarketService
from processors.execution.genesis import JOB_MARKET
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.settings import CHAIN_ID, Settings

SUBMITTED = "lattice.jobs.JobSubmitted"
ASSIGNED = "lattice.jobs.JobAssigned"
RESULT = "lattice.jobs.JobResult"
SETTLED = "lattice.jobs.JobSettled"
RECEIPT = "lattice.receipts.Receipt"
USER = b"\x0a" * 20
NOW = 1_800_000_000_000


def submitted(job: bytes, price: int = 1_000, deadline_ms: int = NOW + 60_000) -> dict[str, Any]:
    return {"job_id": job, "requester": USER, "max_price_wei": price, "deadline_ms": deadline_ms}


def settled(job: bytes, tx: bytes) -> dict[str, Any]:
    return {"job_id": job, "transaction_hash": tx}


def executed(tx: bytes) -> dict[str, Any]:
    return {"transaction_hash": tx, "to_address": JOB_MARKET, "logs": []}


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
    market.apply(SUBMITTED, submitted(job))
    market.apply(RESULT, {"job_id": job, "node": b"\xbb" * 20})
    status = market.jobs[job]
    assert [a["attempt"] for a in status.assignments] == [0, 1]
    assert status.state == "completed"


def test_records_of_jobs_never_submitted_stay_bounded(market: MarketService) -> None:
    for n in range(MAX_EARLY_JOBS + 5):
        market.apply(ASSIGNED, {"job_id": n.to_bytes(32, "big"), "attempt": 0, "nodes": []})
    assert len(market._early) == MAX_EARLY_JOBS
    assert (0).to_bytes(32, "big") not in market._early  # the oldest went first


def test_a_job_holds_its_price_until_a_settlement_of_it_has_executed(
    market: MarketService,
) -> None:
    a, b, c = (bytes([n]) * 32 for n in (1, 2, 3))
    for job in (a, b, c):
        market.apply(SUBMITTED, submitted(job))
    assert market.in_flight(USER, NOW) == 3_000
    market.apply(SETTLED, settled(a, b"\x0a" * 32))  # recorded, not yet on the ledger
    assert market.in_flight(USER, NOW) == 3_000
    market.apply(RECEIPT, executed(b"\x0a" * 32))
    assert market.in_flight(USER, NOW) == 2_000
    market.apply(RECEIPT, executed(b"\x0b" * 32))  # the receipt may come first
    market.apply(SETTLED, settled(b, b"\x0b" * 32))
    assert market.in_flight(USER, NOW) == 1_000
    assert market.in_flight(b"\x0c" * 20, NOW) == 0  # others' jobs hold nothing of ours


def test_holds_come_from_the_log_in_any_order_and_end_in_time(market: MarketService) -> None:
    early, late = b"\x04" * 32, b"\x05" * 32
    # Settled and executed before this gateway read the submission: nothing to hold.
    market.apply(SETTLED, settled(early, b"\x0d" * 32))
    market.apply(RECEIPT, executed(b"\x0d" * 32))
    market.apply(SUBMITTED, submitted(early))
    assert market.in_flight(USER, NOW) == 0
    # Never settled (no verifier): held until its deadline and the grace after it.
    market.apply(SUBMITTED, submitted(late, deadline_ms=NOW))
    assert market.in_flight(USER, NOW + HOLD_GRACE_MS - 1) == 1_000
    assert market.in_flight(USER, NOW + HOLD_GRACE_MS) == 0
