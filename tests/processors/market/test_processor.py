"""The matcher under the runtime, on the real embedded broker: a crash at any point of its
first commit and sends, then a restart, assigns every job once; so does a standby member
taking over from a SIGKILLed active one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processors.market.processor import ASSIGNED, Matcher
from processors.runtime import Runtime
from processors.state import MemoryStore
from schemas.codec import default_codec
from schemas.events import JobAssigned
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer
from streams.settings import Settings
from streams.topics import TOPICS, hex_key, topic
from tests import market_events
from tests.faults.harness import cpu_seconds
from tests.processors.harness import CrashPoint, arm, read_all, run_while

pytestmark = pytest.mark.broker
NODE_KEY = b"\x31" * 32
USER_KEY = b"\x32" * 32
CID = "bafk-model"
JOBS = 6


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        yield broker


def market_with_jobs(bootstrap: str) -> None:
    """One staked, live node, one model, and `JOBS` signed jobs for it."""
    now = int(time.time() * 1000)
    node = market_events.registration(NODE_KEY, price=1)
    producer = Producer(bootstrap)
    producer.send(topic("gpu.nodes"), node, key=hex_key(node.node))
    producer.send(topic("gpu.heartbeats"), market_events.heartbeat(NODE_KEY, now))
    producer.send(topic("receipts"), market_events.staked(node.node, 2 * 10**18))
    producer.send(topic("models"), market_events.manifest("m", CID), key="m")
    for nonce in range(JOBS):
        job = market_events.signed_job(USER_KEY, CID, nonce, now_ms=now)
        producer.send(topic("jobs.submitted"), job, key=hex_key(job.job_id))
    producer.close()


def assignments(bootstrap: str) -> list[JobAssigned]:
    codec = default_codec()
    return [codec.decode_as(raw, JobAssigned) for raw in read_all(bootstrap, ASSIGNED.name)]


@pytest.mark.parametrize(("point", "after"), [("mid-send", 2), ("before-acks", 0)])
def test_a_restarted_matcher_assigns_each_job_once(
    own_broker: EmbeddedBroker, point: CrashPoint, after: int
) -> None:
    market_with_jobs(own_broker.bootstrap)
    settings = Settings(redundancy_bps=0)
    crashing: Runtime[MemoryStore] = Runtime(Matcher(settings), MemoryStore(), own_broker.bootstrap)
    arm(crashing, point, after)
    crashed = run_while(crashing, lambda: len(assignments(own_broker.bootstrap)) >= JOBS)
    assert crashed, "the matcher did not reach its crash"
    before = assignments(own_broker.bootstrap)
    assert len(before) < JOBS or point == "before-acks"
    restarted: Runtime[MemoryStore] = Runtime(
        Matcher(settings), MemoryStore(), own_broker.bootstrap
    )
    run_while(restarted, lambda: len(assignments(own_broker.bootstrap)) >= JOBS)
    time.sleep(0.5)  # room for a (wrong) second assignment
    after_restart = assignments(own_broker.bootstrap)
    assert sorted(a.job_id for a in after_restart) == sorted({a.job_id for a in after_restart})
    assert len(after_restart) == JOBS
    assert {a.attempt for a in after_restart} == {0}
    node = market_events.registration(NODE_KEY).node
    assert all(a.nodes == (node,) for a in after_restart)


def matcher_member(bootstrap: str, group: str, log: Path) -> subprocess.Popen[bytes]:
    """`lattice matcher run` as one member of the standby set `group`."""
    command = [sys.executable, "-m", "deploy.cli", "matcher", "run", "--kafka", bootstrap]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LATTICE_REDUNDANCY_BPS": "0"}
    env["LATTICE_LEASE_MS"] = "600000"  # no lease runs out: every assignment is attempt 0
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*command, "--active-group", group], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def test_a_standby_matcher_takes_over_from_a_killed_active_and_assigns_each_job_once(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """Two matchers under one standby group: the active one decides, the other only folds
    the log. The active is SIGKILLed; jobs that come after are assigned by the other, and
    no job is assigned twice (the new active read the dead one's assignments first)."""
    bootstrap = own_broker.bootstrap
    market_with_jobs(bootstrap)
    group = f"matcher-active-{uuid.uuid4().hex[:6]}"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    members = [matcher_member(bootstrap, group, log) for log in logs]
    leading = "active; deciding from here"

    def wait(what: str, done: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, (what, [log.read_text() for log in logs])
            time.sleep(0.2)

    try:
        wait("the first jobs assigned", lambda: len(assignments(bootstrap)) >= JOBS)
        active = next(i for i, log in enumerate(logs) if leading in log.read_text())
        assert leading not in logs[1 - active].read_text()
        # Standing by is waiting: no tick is due, so the member sleeps in its poll.
        standby = members[1 - active].pid
        used, began = cpu_seconds(standby), time.monotonic()
        time.sleep(3)
        assert cpu_seconds(standby) - used < 0.5 * (time.monotonic() - began)
        members[active].send_signal(signal.SIGKILL)
        members[active].wait(10)
        producer = Producer(bootstrap)
        now = int(time.time() * 1000)
        beat = market_events.heartbeat(NODE_KEY, now, sequence=3)  # still live
        producer.send(topic("gpu.heartbeats"), beat)
        for nonce in range(JOBS, 2 * JOBS):
            job = market_events.signed_job(USER_KEY, CID, nonce, now_ms=now)
            producer.send(topic("jobs.submitted"), job, key=hex_key(job.job_id))
        producer.close()
        wait("the standby to lead", lambda: leading in logs[1 - active].read_text())
        wait("every job assigned", lambda: len(assignments(bootstrap)) >= 2 * JOBS)
        time.sleep(1)  # room for a (wrong) second assignment
        every = assignments(bootstrap)
        assert len(every) == len({a.job_id for a in every}) == 2 * JOBS
        assert {a.attempt for a in every} == {0}
    finally:
        for m in members:
            if m.poll() is None:
                m.terminate()
                m.wait(30)
