"""The worker's job loop under the runtime, on the real embedded broker: each assignment
answered once, whatever point of a commit a crash falls on (the job itself is stubbed: the
runtime's guarantees are the subject, the model runtime has tests of its own)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpu_worker.processor import ASSIGNED, RESULTS, Worker
from processors.runtime import Runtime
from processors.state import RocksStore
from schemas.codec import default_codec
from schemas.events import JobAssigned, JobResult
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer
from streams.settings import Settings
from streams.topics import hex_key
from tests import market_events
from tests.processors.harness import CrashPoint, arm, read_all, run_while

pytestmark = pytest.mark.broker
KEY = b"\x51" * 32
JOBS = 4


class QuickWorker(Worker):
    """A worker whose jobs take no model: its result says which assignment it answers."""

    def result_for(self, assignment: JobAssigned, received_ms: int) -> JobResult:
        return market_events.result(assignment.job_id, KEY, attempt=assignment.attempt)


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, [ASSIGNED, RESULTS])
        yield broker


def assign(bootstrap: str, worker: Worker) -> None:
    producer = Producer(bootstrap)
    lease = int(time.time() * 1000) + 60_000
    for n in range(JOBS):
        job_id = n.to_bytes(32, "big")
        job = market_events.submitted(job_id)
        assigned = dataclasses.replace(
            market_events.assigned(job_id, 0, [worker.address]), job=job, lease_expires_ms=lease
        )
        producer.send(ASSIGNED, assigned, key=hex_key(job_id))
    producer.close()


def results(bootstrap: str) -> list[JobResult]:
    codec = default_codec()
    return [codec.decode_as(raw, JobResult) for raw in read_all(bootstrap, RESULTS.name)]


# Before the first commit: a poll may bring every assignment at once (they run together).
@pytest.mark.parametrize(
    ("point", "after"), [("before-commit", 0), ("mid-send", 2), ("before-acks", 0)]
)
def test_each_assignment_is_answered_once_across_a_crash(
    own_broker: EmbeddedBroker, tmp_path: Path, point: CrashPoint, after: int
) -> None:
    settings = Settings(data_dir=tmp_path)
    worker = QuickWorker(settings, own_broker.bootstrap, KEY, None)
    store = RocksStore(tmp_path / "state")
    runtime: Runtime[RocksStore] = Runtime(worker, store, own_broker.bootstrap)
    runtime.open()  # positioned at the end: what is assigned from now on is for it
    assign(own_broker.bootstrap, worker)
    arm(runtime, point, after)
    crashed = run_while(runtime, lambda: len(results(own_broker.bootstrap)) >= JOBS, 30)
    assert crashed, "the worker did not reach its crash"
    store.close()

    again = RocksStore(tmp_path / "state")
    restarted = QuickWorker(settings, own_broker.bootstrap, KEY, None)
    Runtime(restarted, again, own_broker.bootstrap).run(threading.Event(), until_caught_up=True)
    again.close()
    for made in (worker, restarted):
        made.producer.close()  # its own, for streamed tokens
    answered = results(own_broker.bootstrap)
    assert sorted(r.job_id for r in answered) == [n.to_bytes(32, "big") for n in range(JOBS)]
    assert all(r.cause is not None and r.cause.topic == ASSIGNED.name for r in answered)
