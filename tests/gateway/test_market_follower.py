"""The gateway's market view: job records in whatever order the job topics deliver them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.market import FOLLOWED, HOLD_GRACE_MS, MarketService
from gateway.market.service import MAX_EARLY_JOBS
from processors.execution.genesis import JOB_MARKET
from schemas.events import JobSubmitted, Receipt
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.settings import CHAIN_ID, Settings
from tests import market_events
from tests.market_events import assigned, result, settled

USER = b"\x0a" * 20
NOW = 1_800_000_000_000


def submitted(job: bytes, price: int = 1_000, deadline_ms: int = NOW + 60_000) -> JobSubmitted:
    return market_events.submitted(job, requester=USER, price=price, deadline_ms=deadline_ms)


def executed(tx: bytes) -> Receipt:
    return market_events.receipt(1, tx_hash=tx, to=JOB_MARKET)


@pytest.fixture
def market(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[MarketService]:
    ensure_topics(broker.bootstrap, FOLLOWED)
    service = MarketService(Settings(data_dir=tmp_path), broker.bootstrap, CHAIN_ID)
    yield service
    service.close()


def test_records_that_overtake_their_submission_are_kept(market: MarketService) -> None:
    job = b"\x01" * 32
    # The matcher answers within milliseconds; the follower may read jobs.assigned first.
    market.apply(assigned(job, 0, [b"\xaa" * 20]))
    market.apply(assigned(job, 1, [b"\xbb" * 20]))
    assert job not in market.jobs
    market.apply(submitted(job))
    market.apply(result(job, b"\x0b" * 32))
    status = market.jobs[job]
    assert [a.attempt for a in status.assignments] == [0, 1]
    assert status.state == "completed"


def test_records_of_jobs_never_submitted_stay_bounded(market: MarketService) -> None:
    for n in range(MAX_EARLY_JOBS + 5):
        market.apply(assigned(n.to_bytes(32, "big"), 0, []))
    assert len(market._early) == MAX_EARLY_JOBS and not market.jobs
    assert (0).to_bytes(32, "big") not in market._early  # the oldest went first


def test_a_job_holds_its_price_until_a_settlement_of_it_has_executed(
    market: MarketService,
) -> None:
    a, b, c = (bytes([n]) * 32 for n in (1, 2, 3))
    for job in (a, b, c):
        market.apply(submitted(job))
    assert market.in_flight(USER, NOW) == 3_000
    market.apply(settled(a, b"\x0a" * 32))  # recorded, not yet on the ledger
    assert market.in_flight(USER, NOW) == 3_000
    market.apply(executed(b"\x0a" * 32))
    assert market.in_flight(USER, NOW) == 2_000
    market.apply(executed(b"\x0b" * 32))  # the receipt may come first
    market.apply(settled(b, b"\x0b" * 32))
    assert market.in_flight(USER, NOW) == 1_000
    assert market.in_flight(b"\x0c" * 20, NOW) == 0  # others' jobs hold nothing of ours


def test_holds_come_from_the_log_in_any_order_and_end_in_time(market: MarketService) -> None:
    early, late = b"\x04" * 32, b"\x05" * 32
    # Settled and executed before this gateway read the submission: nothing to hold.
    market.apply(settled(early, b"\x0d" * 32))
    market.apply(executed(b"\x0d" * 32))
    market.apply(submitted(early))
    assert market.in_flight(USER, NOW) == 0
    # Never settled (no verifier): held until its deadline and the grace after it.
    market.apply(submitted(late, deadline_ms=NOW))
    assert market.in_flight(USER, NOW + HOLD_GRACE_MS - 1) == 1_000
    assert market.in_flight(USER, NOW + HOLD_GRACE_MS) == 0
