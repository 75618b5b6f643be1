"""The job lifecycle fold: what it derives does not depend on the order records arrive in."""

from __future__ import annotations

import dataclasses
import itertools

from processors.market.lifecycle import Job
from schemas.events import JobSettled
from tests import market_events
from tests.market_events import assigned, result, settled, submitted

JOB = b"\x07" * 32
A_KEY, B_KEY = b"\x0a" * 32, b"\x0b" * 32
A, B = market_events.registration(A_KEY).node, market_events.registration(B_KEY).node


def paid(provider: bytes, amount: int) -> JobSettled:
    return dataclasses.replace(
        settled(JOB, amount.to_bytes(32, "big"), provider), paid_wei=amount, fee_wei=1
    )


def test_any_order_of_arrival_folds_to_the_same_facts() -> None:
    records = [
        submitted(JOB, price=1_000),
        assigned(JOB, 0, [A]),
        assigned(JOB, 1, [B]),  # A let its lease run out
        result(JOB, B_KEY, attempt=1),
        paid(B, 100),
        paid(B, 100),  # a duplicate settlement record: counted once
    ]
    seen = set()
    for order in itertools.permutations(records):
        job = Job(JOB)
        for record in order:
            job = job.apply(record)
        seen.add(
            (
                job.attempt,
                job.nodes,
                job.answered,
                job.closed,
                job.excluded,
                job.charged,
                job.settled_for,
                job.state,
            )
        )
    assert seen == {(1, (B,), frozenset({B}), True, frozenset({A}), 101, frozenset({B}), "settled")}


def test_an_expiry_closes_the_job_and_names_itself() -> None:
    job = Job(JOB).apply(submitted(JOB)).apply(assigned(JOB, 0, [A])).apply(assigned(JOB, 1, []))
    assert job.expired and job.closed and job.state == "expired"
    expiry = job.expiry
    assert expiry is not None and expiry.attempt == 1
    assert job.excluded == frozenset({A})


def test_the_first_record_of_an_attempt_counts() -> None:
    job = Job(JOB).apply(assigned(JOB, 0, [A])).apply(assigned(JOB, 0, [B]))
    assignment = job.assignment(0)
    assert assignment is not None and assignment.nodes == (A,)
    again = job.apply(submitted(JOB, price=5)).apply(submitted(JOB, price=9))
    assert again.submitted is not None and again.submitted.max_price_wei == 5
    assert Job(JOB).state == "submitted" and not Job(JOB).closed
