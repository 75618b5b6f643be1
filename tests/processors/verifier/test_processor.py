"""The verifier under the runtime, on the real embedded broker: whatever point of its sends
a crash falls on, a restart leaves each result one verdict and each job one settlement,
one transaction per settlement and the settler's nonces without a gap."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from processors.execution.genesis import address_of, devnet_key
from processors.market.content import cid_of
from processors.runtime import Runtime
from processors.state import MemoryStore
from processors.verifier.processor import SETTLED, TX_SUBMITTED, VERDICTS, Verifier
from schemas.codec import default_codec
from schemas.events import (
    Candidate,
    GpuNodeRegistration,
    JobAssigned,
    JobResult,
    JobSettled,
    JobSubmitted,
    JobVerdict,
    TransactionSubmitted,
)
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer
from streams.settings import Settings
from streams.topics import TOPICS, hex_key, topic
from tests import market_events
from tests.processors.harness import CrashPoint, arm, read_all, run_while

pytestmark = pytest.mark.broker
NODE_KEY = b"\x41" * 32
OTHER_KEY = b"\x43" * 32
USER_KEY = b"\x42" * 32
CID = "bafk-model"
JOBS = 4


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        yield broker


OUTPUT = json.dumps({"prompt_tokens": 2, "token_ids": [1, 2], "text": "ab"}).encode()


def assignment(job: JobSubmitted, attempt: int, node: GpuNodeRegistration) -> JobAssigned:
    candidate = Candidate(
        node=node.node,
        eligible=True,
        score=1,
        price_wei_per_hour=node.price_wei_per_hour,
        free_vram_bytes=0,
        reputation_bps=5_000,
        load=0,
        reasons=(),
    )
    return dataclasses.replace(
        market_events.assigned(job.job_id, attempt, [node.node]), candidates=(candidate,), job=job
    )


def answer(job: JobSubmitted, node_key: bytes, attempt: int, now: int, honest: bool) -> JobResult:
    """The node's signed result; a dishonest one names another output's CID (rejected,
    and the node slashed)."""
    made = market_events.result(
        job.job_id, node_key, attempt=attempt, output=OUTPUT, completed_at_ms=now
    )
    cid = cid_of(OUTPUT if honest else b"another output")
    return market_events.signed_result(
        dataclasses.replace(made, output_cid=cid, output_digest=hashlib.sha256(OUTPUT).digest()),
        node_key,
    )


def honest_results(
    bootstrap: str, jobs: int = JOBS, reassigned: bool = False, first_honest: bool = True
) -> None:
    """A node, a model, and `jobs` jobs assigned to the node, each with its signed result.
    `reassigned`: each job's lease ran out and a second node was assigned it too; both
    answer (the first honestly or not, as `first_honest` says)."""
    now = int(time.time() * 1000)
    nodes = [market_events.registration(k, price=3_600_000) for k in (NODE_KEY, OTHER_KEY)]
    producer = Producer(bootstrap)
    for node in nodes:
        producer.send(topic("gpu.nodes"), node, key=hex_key(node.node))
    producer.send(topic("models"), market_events.manifest("m", CID), key="m")
    for nonce in range(jobs):
        job = market_events.signed_job(USER_KEY, CID, nonce, now_ms=now, price=10**15)
        key = hex_key(job.job_id)
        producer.send(topic("jobs.submitted"), job, key=key)
        runs = list(zip((NODE_KEY, OTHER_KEY), nodes, strict=True))[: 2 if reassigned else 1]
        for attempt, (_, node) in enumerate(runs):
            producer.send(topic("jobs.assigned"), assignment(job, attempt, node), key=key)
        for attempt, (node_key, _) in enumerate(runs):
            made = answer(job, node_key, attempt, now, honest=attempt > 0 or first_honest)
            producer.send(topic("jobs.results"), made, key=key)
    producer.close()


def decoded(bootstrap: str, name: str, kind: type[Any]) -> list[Any]:
    codec = default_codec()
    return [codec.decode_as(raw, kind) for raw in read_all(bootstrap, name)]


def settled(bootstrap: str) -> list[JobSettled]:
    return decoded(bootstrap, SETTLED.name, JobSettled)


def settler_transactions(bootstrap: str) -> list[TransactionSubmitted]:
    settler = address_of(devnet_key("settler"))
    sent = decoded(bootstrap, TX_SUBMITTED.name, TransactionSubmitted)
    return [t for t in sent if t.sender == settler]


def run_verifier(bootstrap: str, settings: Settings, point: CrashPoint | None, after: int) -> None:
    runtime: Runtime[MemoryStore] = Runtime(
        Verifier(settings, devnet_key("settler")), MemoryStore(), bootstrap
    )
    if point is None:
        runtime.run(threading.Event(), idle_exit_s=1.0)
        return
    arm(runtime, point, after)
    crashed = run_while(runtime, lambda: len(settled(bootstrap)) >= JOBS)
    assert crashed, "the verifier did not reach its crash"


@pytest.mark.parametrize(("point", "after"), [("mid-send", 2), ("mid-send", 4), ("before-acks", 0)])
def test_a_restarted_verifier_settles_each_result_once(
    own_broker: EmbeddedBroker, tmp_path: Path, point: CrashPoint, after: int
) -> None:
    honest_results(own_broker.bootstrap)
    settings = Settings(data_dir=tmp_path, verify_bps=0)
    run_verifier(own_broker.bootstrap, settings, point, after)
    run_verifier(own_broker.bootstrap, settings, None, 0)

    verdicts = decoded(own_broker.bootstrap, VERDICTS.name, JobVerdict)
    assert len(verdicts) == len({(v.job_id, v.node) for v in verdicts}) == JOBS
    assert {v.outcome for v in verdicts} == {"ACCEPTED"}
    records = settled(own_broker.bootstrap)
    assert len(records) == len({r.job_id for r in records}) == JOBS
    sent = settler_transactions(own_broker.bootstrap)
    assert sorted(t.nonce for t in sent) == list(range(JOBS))
    assert {t.hash for t in sent} == {r.transaction_hash for r in records}
    assert all(r.paid_wei > 0 for r in records)


@pytest.mark.parametrize("first_honest", [True, False])
def test_a_reassigned_job_answered_by_both_nodes_is_paid_once(
    own_broker: EmbeddedBroker, tmp_path: Path, first_honest: bool
) -> None:
    """A job whose lease ran out while its first node's answer was on the way, answered by
    both nodes: it pays for one answer, the first accepted. A first answer rejected (its
    node slashed) pays nothing and leaves the job's one answer to the second."""
    honest_results(own_broker.bootstrap, jobs=2, reassigned=True, first_honest=first_honest)
    run_verifier(own_broker.bootstrap, Settings(data_dir=tmp_path, verify_bps=0), None, 0)

    verdicts = decoded(own_broker.bootstrap, VERDICTS.name, JobVerdict)
    first, second = address_of(NODE_KEY), address_of(OTHER_KEY)
    outcomes = {(v.node, v.outcome) for v in verdicts}
    assert len(verdicts) == 4
    assert outcomes == {(first, "ACCEPTED" if first_honest else "REJECTED"), (second, "ACCEPTED")}
    records = settled(own_broker.bootstrap)
    paid = [r for r in records if r.paid_wei > 0]
    assert len(paid) == len({r.job_id for r in paid}) == 2
    assert {r.provider for r in paid} == {first if first_honest else second}
    slashed = [r for r in records if r.slashed_wei > 0]
    assert len(slashed) == (0 if first_honest else 2) and len(records) == len(paid) + len(slashed)
    sent = settler_transactions(own_broker.bootstrap)  # nothing sent that is not recorded
    assert sorted(t.nonce for t in sent) == list(range(len(records)))
    assert {t.hash for t in sent} == {r.transaction_hash for r in records}
