"""The matcher: signed job requests in, assignments (with their reasons) out.

It folds the market's topics into a `MarketView` and each job's records into its `Job`
(`processors.market.lifecycle`), its own output `lattice.jobs.assigned` included. Its state
is in memory: at every start the runtime feeds it everything from the beginning, and it
decides nothing until it has caught up (ticks start then), so a restarted matcher never
assigns a job twice. Live, its `tick` assigns each pending job
(`processors.market.matching.decide`), at once when a job came in, and on its clock:

- an assignment whose lease ran out with no result goes to another node (attempt + 1, the
  silent node excluded); a node that dies mid-job therefore loses it after `lease_ms`;
- a job still without a result at its deadline is expired: an assignment with no nodes,
  which the verifier turns into a refund.

It also brings contracts' requests to the market: an `InferenceRequested` log of the
`InferenceOracle` in an executed block's receipt becomes a `JobSubmitted`
(`processors.market.oracle.job_of`) once the model's manifest is known (or, if it never
comes, at the request's deadline, to be expired and refunded). The job's id derives from
the request id, so a restarted or standby matcher that writes it again writes the same job,
and the matcher assigns it as it does a user's.

Leases and deadlines are liveness decisions on the wall clock (the tick's `now_ms`); each
is written down as an event with its seed and candidates, and everything downstream
(verdicts, settlements, reputation) derives from those events alone. An assignment is
folded into the job when it is decided; reading it back later changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from processors.abc import Output, Pace, Processor, Subscription
from processors.market.jobs import (
    InvalidSignature,
    is_oracle_job,
    job_signer,
    oracle_job_id,
    recover,
    result_hash,
)
from processors.market.lifecycle import Job
from processors.market.matching import JobNeeds, decide
from processors.market.oracle import OracleRequest, job_of, requests_in
from processors.market.view import MarketView
from processors.state import MemoryStore
from schemas.events import JobAssigned, JobResult, JobSubmitted, Position, Receipt
from streams.kafka import LOW_LATENCY_READ, Record
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


class Matcher(Processor[MemoryStore]):
    role = "matcher"
    pace = Pace(poll_s=0.02, tick_s=0.05, read_config=LOW_LATENCY_READ)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = f"{settings.client_id}-matcher"
        self.market = MarketView(settings.chain_id)
        self.jobs: dict[bytes, Job] = {}
        #: Submitted jobs not closed yet, in the order they came in.
        self.open: dict[bytes, None] = {}
        self.decisions = 0
        self._came_in = False
        #: Oracle requests from the receipts whose job is not on the log yet, with the
        #: position of their receipt (the job's cause).
        self.requested: dict[bytes, tuple[OracleRequest, Position]] = {}

    def subscriptions(self) -> Sequence[Subscription]:
        # Jobs come in on a request's path: fed the moment they are durable.
        return [Subscription(spec, fed=spec == SUBMITTED) for spec in INPUTS]

    # -- folding the log --------------------------------------------------------------------

    def handle(self, record: Record[Any], state: MemoryStore) -> Sequence[Output]:
        event = record.event
        if isinstance(event, JobSubmitted):
            self._submitted(event, record)
        elif isinstance(event, JobAssigned):
            assigned = self.jobs.get(event.job_id) or Job(event.job_id)
            if event.attempt > assigned.attempt:
                self._fold(assigned.apply(event))
        elif isinstance(event, JobResult):
            answered = self.jobs.get(event.job_id)
            # A result the node did not sign does not count as its answer: the lease runs out.
            if answered is not None and self._signed_by_node(event):
                self._fold(answered.apply(event))
        else:
            self.market.apply(event)
            if isinstance(event, Receipt):
                self._requested(event, record.position)
        return ()

    def _requested(self, receipt: Receipt, position: Position) -> None:
        for request in requests_in(receipt):
            job_id = oracle_job_id(self.settings.chain_id, request.request_id)
            if job_id not in self.jobs:
                self.requested[job_id] = (request, position)
                self._came_in = True

    def _submitted(self, event: JobSubmitted, record: Record[Any]) -> None:
        job = self.jobs.get(event.job_id) or Job(event.job_id)
        if job.submitted is not None:
            return
        try:
            job_signer(event, self.settings.chain_id)
        except InvalidSignature as exc:
            log.warning("dropping job 0x%s: %s", event.job_id.hex(), exc)
            return
        requested = self.requested.get(event.job_id)
        if requested is not None:
            derived = job_of(requested[0], self.settings.chain_id, event.required_vram_bytes)
            if derived != event:
                log.warning("dropping job 0x%s: not what its request asks", event.job_id.hex())
                return
            del self.requested[event.job_id]
        self._fold(job.apply(event, record.position))
        self._came_in = True

    def _fold(self, job: Job) -> None:
        self.jobs[job.job_id] = job
        if job.submitted is not None and not job.closed:
            self.open.setdefault(job.job_id, None)
        else:
            self.open.pop(job.job_id, None)

    def _signed_by_node(self, result: JobResult) -> bool:
        try:
            signer = recover(result_hash(result, self.settings.chain_id), result.signature)
        except InvalidSignature:
            return False
        return bool(signer == result.node)

    # -- deciding -------------------------------------------------------------------------

    def tick_due(self) -> bool:
        return self._came_in

    def assignment(self, job: Job, now: int, expire: bool) -> JobAssigned:
        record = job.submitted
        assert record is not None and job.submitted_at is not None
        attempt = job.attempt + 1
        model = self.market.versions.get(record.params.get("manifest_cid", ""))
        known = model is not None and model.name == record.model_id
        needs = JobNeeds(
            record.job_id,
            record.kind,
            record.required_vram_bytes,
            record.max_price_wei,
            record.deadline_ms,
        )
        decision = decide(
            needs,
            self.market.node_views(),
            now,
            attempt,
            job.excluded,
            # The oracle's escrow pays one answer: its jobs are never doubled at random.
            0 if is_oracle_job(record) else self.settings.redundancy_bps,
            force_redundant=record.params.get("redundancy") == "2",
        )
        nodes = () if expire or not known else decision.nodes
        return JobAssigned(
            job_id=record.job_id,
            attempt=attempt,
            nodes=nodes,
            redundant=decision.redundant and bool(nodes),
            seed=decision.seed,
            candidates=decision.candidates,
            lease_expires_ms=now + self.settings.lease_ms if nodes else now,
            cause=job.submitted_at,
            job=record if nodes else None,
        )

    def bridge(self, now_ms: int) -> list[Output]:
        """Oracle requests made jobs: each once its model's manifest is here (the job needs
        its memory), or at its deadline without it (the job then expires, and is refunded)."""
        outputs = []
        for job_id, (request, position) in list(self.requested.items()):
            manifest = self.market.versions.get(request.manifest_cid)
            if manifest is None and now_ms < request.deadline_ms:
                continue
            vram = manifest.vram_required_bytes if manifest is not None else 0
            record = job_of(request, self.settings.chain_id, vram)
            self._fold(Job(job_id).apply(record, position))
            del self.requested[job_id]
            log.info("oracle request %d -> job 0x%s", request.request_id, job_id.hex()[:12])
            outputs.append(Output(SUBMITTED, record, key=hex_key(job_id)))
        return outputs

    def tick(self, now_ms: int, state: MemoryStore) -> Sequence[Output]:
        """Oracle requests made jobs, then the assignments due now; each is folded into its
        job as it is decided."""
        self._came_in = False
        due = self.bridge(now_ms)
        jobs = [self.jobs[j] for j in self.open]
        JOB_QUEUE.labels("waiting").set(sum(1 for j in jobs if not j.nodes))
        JOB_QUEUE.labels("running").set(sum(1 for j in jobs if j.nodes))
        for job in jobs:
            assignment = self._due(job, now_ms)
            if assignment is None:
                continue
            self._fold(job.apply(assignment))
            self.decisions += 1
            log.info(
                "job 0x%s attempt %d -> %s",
                job.job_id.hex()[:12],
                assignment.attempt,
                ", ".join("0x" + n.hex()[:8] for n in assignment.nodes) or "expired",
            )
            due.append(Output(ASSIGNED, assignment, key=hex_key(job.job_id)))
        return due

    def _due(self, job: Job, now: int) -> JobAssigned | None:
        """The assignment a job needs now, if any: an expiry past its deadline, a first
        assignment, or a new node once the lease ran out unanswered."""
        assert job.submitted is not None
        if now >= job.submitted.deadline_ms:
            return self.assignment(job, now, expire=True)
        if job.attempt >= 0 and (now < job.lease_expires_ms or job.answered):
            return None
        proposal = self.assignment(job, now, expire=False)
        known = job.submitted.params.get("manifest_cid", "") in self.market.versions
        return proposal if proposal.nodes or not known else None  # unknown models expire
