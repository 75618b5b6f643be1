"""The matcher: signed job requests in, assignments (with their reasons) out.

It folds the market's topics into a `MarketView` and its own output, `lattice.jobs.assigned`,
into the jobs' states; on start it reads everything from the beginning and decides nothing
until it has caught up, so a restarted matcher never assigns a job twice. Live, it assigns
each pending job (`processors.market.matching.decide`), and on its clock:

- an assignment whose lease ran out with no result goes to another node (attempt + 1, the
  silent node excluded); a node that dies mid-job therefore loses it after `lease_ms`;
- a job still without a result at its deadline is expired: an assignment with no nodes,
  which the verifier turns into a refund.

Leases and deadlines are liveness decisions on the wall clock; each is written down as an
event with its seed and candidates, and everything downstream (verdicts, settlements,
reputation) derives from those events alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from processors.market.jobs import InvalidSignature, job_signer, recover, result_hash
from processors.market.matching import JobNeeds, decide
from processors.market.view import MarketView
from streams.kafka import LOW_LATENCY_READ, CatchUp, Producer, Reader
from streams.metrics import JOB_QUEUE
from streams.settings import Settings
from streams.topics import hex_key, topic

log = logging.getLogger(__name__)

SUBMITTED = topic("jobs.submitted")
ASSIGNED = topic("jobs.assigned")
RESULTS = topic("jobs.results")
VERDICTS = topic("jobs.verdicts")
INPUTS = (
    topic("gpu.nodes"),
    topic("gpu.heartbeats"),
    topic("models"),
    SUBMITTED,
    ASSIGNED,
    RESULTS,
    VERDICTS,
    topic("receipts"),  # nodes' stakes, from JobMarket's events
)


@dataclass
class JobState:
    record: dict[str, Any]
    position: dict[str, Any]
    attempt: int = -1  # the latest assignment's attempt; -1 before the first
    nodes: tuple[bytes, ...] = ()
    lease_expires_ms: int = 0
    answered: set[bytes] = field(default_factory=set)
    excluded: set[bytes] = field(default_factory=set)
    closed: bool = False  # answered, or expired
    pending_emit: bool = False


class Matcher:
    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.clock = clock
        self.market = MarketView(settings.chain_id)
        self.jobs: dict[bytes, JobState] = {}
        self.producer = Producer(bootstrap, client_id=f"{settings.client_id}-matcher")
        self.decisions = 0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- folding the log --------------------------------------------------------------------

    def apply(self, schema: str, record: dict[str, Any], position: dict[str, Any]) -> None:
        if schema == "lattice.jobs.JobSubmitted":
            if record["job_id"] in self.jobs:
                return
            try:
                job_signer(record, self.settings.chain_id)
            except InvalidSignature as exc:
                log.warning("dropping job 0x%s: %s", record["job_id"].hex(), exc)
                return
            self.jobs[record["job_id"]] = JobState(record, position)
        elif schema == "lattice.jobs.JobAssigned":
            job = self.jobs.get(record["job_id"])
            if job is None or record["attempt"] <= job.attempt:
                return
            job.excluded.update(n for n in job.nodes if n not in job.answered)
            job.attempt = record["attempt"]
            job.nodes = tuple(record["nodes"])
            job.lease_expires_ms = record["lease_expires_ms"]
            job.pending_emit = False
            job.closed = job.closed or not record["nodes"]
        elif schema == "lattice.jobs.JobResult":
            job = self.jobs.get(record["job_id"])
            # A result the node did not sign does not count as its answer: the lease runs out.
            if job is not None and self._signed_by_node(record):
                job.answered.add(record["node"])
                job.closed = job.closed or all(n in job.answered for n in job.nodes)
        else:
            self.market.apply(schema, record)

    def _signed_by_node(self, result: dict[str, Any]) -> bool:
        try:
            signer = recover(result_hash(result, self.settings.chain_id), result["signature"])
        except InvalidSignature:
            return False
        return bool(signer == result["node"])

    # -- deciding -------------------------------------------------------------------------

    def needs(self, job: JobState) -> JobNeeds:
        r = job.record
        return JobNeeds(
            r["job_id"], r["kind"], r["required_vram_bytes"], r["max_price_wei"], r["deadline_ms"]
        )

    def assignment(self, job: JobState, now: int, expire: bool) -> dict[str, Any]:
        attempt = job.attempt + 1
        record = job.record
        model = self.market.versions.get(record["params"].get("manifest_cid", ""))
        known = model is not None and model["name"] == record["model_id"]
        decision = decide(
            self.needs(job),
            self.market.node_views(),
            now,
            attempt,
            frozenset(job.excluded),
            self.settings.redundancy_bps,
            force_redundant=record["params"].get("redundancy") == "2",
        )
        nodes = () if expire or not known else decision.nodes
        return {
            "job_id": record["job_id"],
            "attempt": attempt,
            "nodes": list(nodes),
            "redundant": decision.redundant and bool(nodes),
            "seed": decision.seed,
            "candidates": [{**c.__dict__, "reasons": list(c.reasons)} for c in decision.candidates],
            "lease_expires_ms": now + self.settings.lease_ms if nodes else now,
            "cause": job.position,
            "job": record if nodes else None,
        }

    def tick(self) -> list[dict[str, Any]]:
        """The assignments due now (not yet sent)."""
        now = self.now_ms()
        open_jobs = [j for j in self.jobs.values() if not j.closed]
        JOB_QUEUE.labels("waiting").set(sum(1 for j in open_jobs if not j.nodes))
        JOB_QUEUE.labels("running").set(sum(1 for j in open_jobs if j.nodes))
        due = []
        for job in self.jobs.values():
            if job.closed or job.pending_emit:
                continue
            expired = now >= job.record["deadline_ms"]
            if expired:
                due.append(self.assignment(job, now, expire=True))
            elif job.attempt < 0 or (now >= job.lease_expires_ms and not job.answered):
                # Nodes that let their lease run out do not get the job back.
                job.excluded.update(job.nodes)
                proposal = self.assignment(job, now, expire=False)
                known = job.record["params"].get("manifest_cid", "") in self.market.versions
                if proposal["nodes"] or not known:
                    due.append(proposal)  # an unknown model is expired at once
                else:
                    continue
            else:
                continue
            job.pending_emit = True
        return due

    def emit(self, assignments: list[dict[str, Any]]) -> None:
        futures = [self.producer.send(ASSIGNED, a, key=hex_key(a["job_id"])) for a in assignments]
        for future, a in zip(futures, assignments, strict=True):
            future.result(30)
            self.decisions += 1
            log.info(
                "job 0x%s attempt %d -> %s",
                a["job_id"].hex()[:12],
                a["attempt"],
                ", ".join("0x" + n.hex()[:8] for n in a["nodes"]) or "expired",
            )

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        reader = Reader(
            self.bootstrap, client_id=f"{self.settings.client_id}-matcher", config=LOW_LATENCY_READ
        )
        positions = {}
        for spec in INPUTS:
            for p in reader.partitions(spec.name):
                positions[(spec.name, p)] = 0
        catch_up = CatchUp(reader, positions)
        reader.assign(positions)
        last_tick = 0.0
        try:
            while not stop.is_set():
                message = reader.poll_raw(0.02)
                if message is not None:
                    catch_up.saw(message)
                    if message.error() is None:
                        record = reader.decode(message)
                        self.apply(record.schema, record.value, record.position)
                if not catch_up.done:
                    continue
                if (
                    message is None
                    or time.monotonic() - last_tick > 0.05
                    or (message.error() is None and message.topic() == SUBMITTED.name)
                ):
                    last_tick = time.monotonic()
                    due = self.tick()
                    if due:
                        self.emit(due)
        finally:
            reader.close()
            self.producer.close()
