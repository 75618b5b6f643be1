"""Contracts' requests in the matcher: an `InferenceRequested` log in a receipt becomes one
job (once, whoever writes it and whenever it is read back), waits for its model's manifest
until its deadline, and a record claiming the request with other contents is dropped."""

from __future__ import annotations

import dataclasses
from typing import Any

from eth_abi.abi import encode

from processors.execution.genesis import INFERENCE_ORACLE
from processors.market import oracle
from processors.market.jobs import InvalidSignature, is_oracle_job, job_signer
from processors.market.processor import ASSIGNED, SUBMITTED, Matcher
from processors.state import MemoryStore
from schemas.events import JobAssigned, JobSubmitted, Log
from streams.kafka import Record
from streams.settings import CHAIN_ID, Settings
from tests import market_events

NODE_KEY = b"\x31" * 32
CID = "bafk-model"
CONTRACT = b"\xc0" * 20
NOW = 1_700_000_100_000


def requested(request_id: int, cid: str = CID, deadline_s: int = 1_700_000_160) -> Log:
    return Log(
        log_index=0,
        address=INFERENCE_ORACLE,
        topics=(
            oracle.REQUESTED,
            request_id.to_bytes(32, "big"),
            CONTRACT.rjust(32, b"\0"),
        ),
        data=encode(
            ["string", "string", "bytes", "uint256", "uint64", "uint64", "uint32"],
            ["m", cid, b'{"input": "great"}', 10**15, 1_700_000_100, deadline_s, 100_000],
        ),
    )


class Feed:
    """A matcher fed records by hand, as the runtime would after catching up."""

    def __init__(self) -> None:
        self.matcher = Matcher(Settings(redundancy_bps=0))
        self.offset = 0

    def give(self, topic: str, event: Any) -> None:
        self.offset += 1
        record = Record(topic, 0, self.offset, 0, None, event, b"")
        self.matcher.handle(record, MemoryStore())

    def tick(self, now: int = NOW) -> list[Any]:
        return [(o.topic.name, o.event) for o in self.matcher.tick(now, MemoryStore())]


def market() -> Feed:
    feed = Feed()
    node = market_events.registration(NODE_KEY, price=1)
    feed.give("lattice.gpu.nodes", node)
    feed.give("lattice.gpu.heartbeats", market_events.heartbeat(NODE_KEY, NOW))
    feed.give("lattice.receipts", market_events.staked(node.node, 2 * 10**18))
    feed.give("lattice.models", market_events.manifest("m", CID))
    return feed


def test_a_request_becomes_one_job_assigned_at_once() -> None:
    feed = market()
    feed.give("lattice.receipts", market_events.receipt(7, [requested(1)], to=INFERENCE_ORACLE))
    out = feed.tick()
    assert [name for name, _ in out] == [SUBMITTED.name, ASSIGNED.name]
    job = out[0][1]
    assert isinstance(job, JobSubmitted) and is_oracle_job(job)
    assert job.requester == CONTRACT and job.required_vram_bytes == 1 << 20
    assert job.deadline_ms == 1_700_000_160_000 and job.max_price_wei == 10**15
    assert job_signer(job, CHAIN_ID) == INFERENCE_ORACLE
    assignment = out[1][1]
    assert isinstance(assignment, JobAssigned) and assignment.nodes and not assignment.redundant
    # Read back (and the receipt again, as at-least-once may bring it): nothing new.
    feed.give(SUBMITTED.name, job)
    feed.give("lattice.receipts", market_events.receipt(7, [requested(1)], to=INFERENCE_ORACLE))
    assert feed.tick() == []


def test_a_matcher_that_read_the_job_back_writes_it_no_more() -> None:
    first = market()
    first.give("lattice.receipts", market_events.receipt(7, [requested(2)], to=INFERENCE_ORACLE))
    job = first.tick()[0][1]
    # A restarted matcher reads the job before the receipt, or after it: no second job.
    for order in ([SUBMITTED.name, "lattice.receipts"], ["lattice.receipts", SUBMITTED.name]):
        again = market()
        for topic in order:
            event = (
                job
                if topic == SUBMITTED.name
                else market_events.receipt(7, [requested(2)], to=INFERENCE_ORACLE)
            )
            again.give(topic, event)
        assert [name for name, _ in again.tick()] == [ASSIGNED.name]


def test_an_unknown_manifest_waits_until_the_deadline_then_expires() -> None:
    feed = market()
    log = requested(3, cid="bafk-nobody-has-it")
    feed.give("lattice.receipts", market_events.receipt(8, [log], to=INFERENCE_ORACLE))
    assert feed.tick() == []
    out = feed.tick(1_700_000_160_000)
    assert [name for name, _ in out] == [SUBMITTED.name, ASSIGNED.name]
    assert out[1][1].nodes == ()  # expired: the verifier refunds the escrow


def test_a_record_claiming_a_request_with_other_contents_is_dropped() -> None:
    feed = market()
    receipt = market_events.receipt(9, [requested(4)], to=INFERENCE_ORACLE)
    real = oracle.job_of(oracle.requests_in(receipt)[0], CHAIN_ID, 1 << 20)
    forged = dataclasses.replace(real, input=b'{"input": "awful"}')
    feed.give("lattice.receipts", receipt)
    feed.give(SUBMITTED.name, forged)
    out = feed.tick()
    assert out[0] == (SUBMITTED.name, real)
    # Another id, a signature, or a nonce that is not the request's: not the oracle's job.
    for bad in (
        dataclasses.replace(real, job_id=b"\x01" * 32),
        dataclasses.replace(real, nonce=5),
    ):
        try:
            job_signer(bad, CHAIN_ID)
        except InvalidSignature:
            continue
        raise AssertionError(f"{bad} passed as the oracle's")
    assert not is_oracle_job(dataclasses.replace(real, signature=b"\x01" * 65))
