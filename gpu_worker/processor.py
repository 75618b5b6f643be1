"""`lattice worker`: a compute node, and its job loop as a processor.

Start-up: probe the hardware, stake and register on the ledger (`JobMarket.registerNode`,
sent through the gateway's JSON-RPC), announce the node on `lattice.gpu.nodes` (signed), then
heartbeat on `lattice.gpu.heartbeats` every couple of seconds with live utilisation.

The job loop is this processor under the one runtime: it reads `lattice.jobs.assigned` (from
its end at the node's first start, from its store's offset after that, so the node's store
in `<data-dir>/workers/<address>/state` says which assignments it has answered); an
assignment naming this node (and not yet past its lease) is run — models are fetched by
CID, verified and loaded once; the single-choice generations of one poll that share a
model and a prompt length, and the jobs of one text encoder, run as one batch
(`Worker.handle_all`) — and answered on
`lattice.jobs.results` with a signed result
carrying the output inline, its CID and digest, a tolerance-aware fingerprint, timings and a
hardware snapshot. The result is committed with the assignment's offset and sent from the
outbox, once; a crash before the commit runs the job again (the verifier pays a job once),
and a node that dies holding a job loses it to another node when its lease expires.

A job that would exhaust the node's memory fails alone, not the node: the model runtime
refuses it with `OverBudgetError` (estimated from declared sizes before it runs, or ONNX
Runtime's capped arena refusing an allocation; `worker_memory_bytes`), and any other
`MemoryError` is treated alike, as is an input no node could run (`JobInputError`:
sampling out of range, no texts to embed; a REST job's input is the user's). The node
then answers the assignment with a signed failure (`FAILED_SCHEME`, the output
`{"error": {"code", "message"}}`) rather than staying silent: silence would cost every
node in turn a lease on a job none of them can run, and the user would wait out the
deadline to learn nothing. The failure closes the job for this node like any answer; the
verifier refunds it (INCONCLUSIVE: no pay, no slash) and the gateway shows the error.
Other exceptions still leave the assignment unanswered, for another node to take when the
lease expires.

Unlike a fold, a job is work done in the world: its result (timings included) is what the
node measured, written down and signed. Streamed tokens are progress only, sent at once
beside the runtime and not kept: the signed result that follows is what counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from eth_hash.auto import keccak

from gpu_worker.probe import Hardware, probe, usage
from gpu_worker.staking import market_uint
from processors.abc import Output, Pace, Processor, Subscription
from processors.compute.budget import JobInputError, default_budget
from processors.compute.generation import StreamedToken
from processors.compute.models import (
    CLASSIFICATION,
    EMBEDDING,
    GENERATIVE,
    IMAGE_CLASSIFICATION,
    IMAGE_TEXT,
)
from processors.compute.runtime import BlockSource, LoadedModel, ModelCache
from processors.compute.training import Trainer, TrainingSpec, output_document
from processors.execution.genesis import JOB_MARKET, address_of
from processors.market.chain import register_node_call, stakes_call, unbonding_until_call
from processors.market.client import send_call, wait_for_ledger
from processors.market.content import Blockstore, cid_of
from processors.market.ipfs import ipfs_home
from processors.market.jobs import TRAINING, node_record_hash, result_hash, sign
from processors.runtime import Runtime
from processors.state import RocksStore
from processors.verifier.core import (
    CLASSIFICATION_SCHEME,
    EMBEDDING_SCHEME,
    FAILED_SCHEME,
    GENERATION_SCHEME,
    TENSOR_SCHEME,
    TRAINING_SCHEME,
    embedding_fingerprint,
    failure_output,
    generation_fingerprint,
    tensor_fingerprint,
)
from schemas.events import (
    EpochCheckpoint,
    GpuNodeHeartbeat,
    GpuNodeRegistration,
    HardwareSnapshot,
    JobAssigned,
    JobProof,
    JobResult,
    JobSubmitted,
    JobTokens,
    Timings,
)
from streams.kafka import LOW_LATENCY_READ, Producer, Record
from streams.metrics import MODEL_MEMORY
from streams.settings import Settings
from streams.topics import hex_key, topic

log = logging.getLogger(__name__)

NODES = topic("gpu.nodes")
HEARTBEATS = topic("gpu.heartbeats")
ASSIGNED = topic("jobs.assigned")
RESULTS = topic("jobs.results")
PROOFS = topic("jobs.proofs")
TOKENS = topic("jobs.tokens")
HEARTBEAT_EVERY_S = 2.0
#: The most assignments a worker takes from one poll (and so runs as one batch).
BATCH = 8
VERSION = "0.1.0"


def execute(
    model: LoadedModel,
    job: JobSubmitted,
    on_text: Callable[[StreamedToken], None] | None = None,
) -> tuple[bytes, str, bytes]:
    """Run one inference job: (output bytes, fingerprint scheme, fingerprint)."""
    data = job.input or b""
    if model.manifest.task in GENERATIVE:
        generation = model.generate(json.loads(data), on_text, job.job_id)
        return (
            generation.output(),
            GENERATION_SCHEME,
            generation_fingerprint(generation.chosen_logits),
        )
    if model.manifest.task == EMBEDDING:
        return encoded(model, *model.embed(json.loads(data)))
    if model.manifest.task in (CLASSIFICATION, IMAGE_CLASSIFICATION, IMAGE_TEXT):
        return encoded(model, *model.classify(json.loads(data)))
    output = model.run_tensors(data)
    return output, TENSOR_SCHEME, tensor_fingerprint(output, job.job_id)


def encoded(model: LoadedModel, output: bytes, values: np.ndarray) -> tuple[bytes, str, bytes]:
    """An encoder's answer (its vectors or logits), its fingerprint scheme and fingerprint."""
    scheme = EMBEDDING_SCHEME if model.manifest.task == EMBEDDING else CLASSIFICATION_SCHEME
    return output, scheme, embedding_fingerprint(values)


def work_of(output: bytes) -> int:
    """The tokens a batched job's answer says it read and made: its share of the batch."""
    document = json.loads(output)
    made = sum(len(c.get("token_ids", ())) for c in document.get("choices") or [document])
    return int(document.get("prompt_tokens", 0)) + made


def batch_shares(compute_ms: int, work: Sequence[int]) -> list[int]:
    """A batch's compute time split among its jobs by their work: each job is paid for
    what it took (the verifier pays compute time), not for the whole batch."""
    total = sum(work)
    if total <= 0:
        return [compute_ms // max(1, len(work))] * len(work)
    return [compute_ms * w // total for w in work]


#: The longest a streamed token waits for others to share its event (the first goes at once).
STREAM_EVERY_S = 0.02


@dataclass
class TokenBatch:
    """Streamed tokens gathered into `lattice.jobs.tokens` events: one event per token made
    a fast model's stream a record per millisecond; now at most one per `STREAM_EVERY_S`."""

    job_id: bytes
    node: bytes
    attempt: int
    choice: int = 0
    first: int = 0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    sent_at: float | None = None

    def add(self, streamed: StreamedToken, now: float) -> list[JobTokens]:
        """The events due after this token (none while it waits for company); an event
        holds one choice's tokens, so the next choice's first token sends the last one's."""
        due = self.rest() if streamed.choice != self.choice else []
        if not self.token_ids:
            self.choice, self.first = streamed.choice, streamed.position
        self.token_ids.append(streamed.token)
        self.text += streamed.text
        if streamed.logprob is not None:
            self.logprobs.append(streamed.logprob)
        if not due and self.sent_at is not None and now - self.sent_at < STREAM_EVERY_S:
            return []
        self.sent_at = now
        return due + self.rest()

    def rest(self) -> list[JobTokens]:
        """The event holding whatever is gathered (none when nothing is)."""
        if not self.token_ids:
            return []
        event = JobTokens(
            job_id=self.job_id,
            node=self.node,
            attempt=self.attempt,
            index=self.first,
            token_ids=tuple(self.token_ids),
            text=self.text,
            choice=self.choice,
            logprobs=json.dumps(self.logprobs) if self.logprobs else "",
        )
        self.token_ids, self.text, self.logprobs = [], "", []
        return [event]


class Worker(Processor[RocksStore]):
    role = "worker"
    # Up to BATCH assignments a poll, run together where they can share a batch.
    pace = Pace(batch=BATCH, read_config=LOW_LATENCY_READ, together=True)

    def __init__(
        self, settings: Settings, bootstrap: str, private_key: bytes, rpc_url: str | None
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.key = private_key
        self.address = address_of(private_key)
        self.name = f"lattice-worker-{self.address.hex()}"
        self.rpc_url = rpc_url
        self.hardware: Hardware = probe()
        self.producer = Producer(
            bootstrap, client_id=f"{settings.client_id}-worker", config=settings.kafka_config
        )
        self.work = settings.data_dir / "workers" / self.address.hex()
        peers = [rpc_url.rstrip("/")] if rpc_url else []
        budget = settings.worker_memory_bytes or self.hardware.memory_bytes * 3 // 4
        self.models = ModelCache(
            BlockSource(Blockstore(self.work / "blockstore"), peers, ipfs_home=ipfs_home(settings)),
            self.work,
            threads=settings.worker_threads,
            use_gpu=bool(self.hardware.devices),
            memory_budget=default_budget(budget),
        )
        self.in_flight = 0
        self.attempt = 0  # of the job being run
        self.sequence = int(time.time() * 1000)  # strictly increasing across restarts

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(ASSIGNED, start="end", fed=True),)

    # -- announcing the node --------------------------------------------------------------

    def stake_on_ledger(self) -> str | None:
        """Send `registerNode` with what the stake lacks and wait for it to execute (the
        matcher offers work only to nodes staked on the ledger); the transaction hash, or
        None without a gateway to send it through."""
        if self.rpc_url is None:
            return None
        wait_for_ledger(self.rpc_url)
        staked = market_uint(self.rpc_url, stakes_call(self.address))
        if market_uint(self.rpc_url, unbonding_until_call(self.address)):
            log.warning("node 0x%s was leaving; registering again rejoins", self.address.hex())
        # Top the stake up to what the settings ask; the call also sets the price.
        top_up = max(0, self.settings.worker_stake - staked)
        tx_hash, _ = send_call(
            self.rpc_url,
            self.settings.chain_id,
            self.key,
            JOB_MARKET,
            register_node_call(self.settings.worker_price),
            value=top_up,
            gas=150_000,
        )
        return tx_hash

    def registration(self) -> GpuNodeRegistration:
        hw = self.hardware
        self.sequence += 1
        record = GpuNodeRegistration(
            node=self.address,
            price_wei_per_hour=self.settings.worker_price,
            stake_wei=self.settings.worker_stake,
            devices=hw.devices,
            driver_version=hw.driver_version,
            cuda_version=hw.cuda_version,
            cpu_model=hw.cpu_model,
            cpu_cores=hw.cpu_cores,
            ram_bytes=hw.ram_bytes,
            runtimes=hw.runtimes,
            worker_version=VERSION,
            sequence=self.sequence,
            registered_at_ms=int(time.time() * 1000),
            signature=b"",
        )
        digest = node_record_hash("node-registration", record, self.settings.chain_id)
        return dataclasses.replace(record, signature=sign(self.key, digest))

    def heartbeat(self) -> GpuNodeHeartbeat:
        self.sequence += 1
        record = GpuNodeHeartbeat(
            node=self.address,
            sequence=self.sequence,
            timestamp_ms=int(time.time() * 1000),
            devices=tuple(usage()),
            jobs_in_flight=self.in_flight,
            signature=b"",
        )
        digest = node_record_hash("node-heartbeat", record, self.settings.chain_id)
        return dataclasses.replace(record, signature=sign(self.key, digest))

    def announce(self) -> None:
        tx = self.stake_on_ledger()
        self.producer.send(NODES, self.registration(), key=hex_key(self.address)).result(30)
        self.producer.send(HEARTBEATS, self.heartbeat(), key=hex_key(self.address)).result(30)
        log.info(
            "node 0x%s registered (%s, %d cores, stake tx %s)",
            self.address.hex(),
            self.hardware.device_name,
            self.hardware.cpu_cores,
            tx,
        )

    # -- the job loop ---------------------------------------------------------------------

    def mine(self, record: Record[Any], now: int) -> JobAssigned | None:
        """The assignment in `record`, if it is this node's to run now."""
        assignment = record.event
        if not isinstance(assignment, JobAssigned):
            return None
        if self.address not in assignment.nodes or assignment.job is None:
            return None
        if now > assignment.lease_expires_ms:
            log.info("skipping job 0x%s: its lease expired", assignment.job_id.hex())
            return None
        return assignment

    def handle_all(
        self, records: Sequence[Record[Any]], state: RocksStore
    ) -> list[Sequence[Output]]:
        """The assignments one poll brought: single-choice generations of one model (and of
        one prompt length where its graph takes no mask) run as one batch
        (`LoadedModel.generate_together`), as do the jobs of one encoder, text or image
        (`encode_together`); the rest one after the other. A batch that fails runs its
        jobs one by one, so each gets the answer (or the failure) it would have alone."""
        now = int(time.time() * 1000)
        answers: list[Sequence[Output]] = [()] * len(records)
        groups: dict[tuple[str, int], list[int]] = {}
        for index, record in enumerate(records):
            assignment = self.mine(record, now)
            if assignment is None:
                continue  # not this node's, or its lease ran out
            key = self._batch_key(assignment)
            if key is None:
                answers[index] = self.handle(record, state)
            else:
                groups.setdefault(key, []).append(index)
        for (manifest_cid, _), group in groups.items():
            # Jobs run alone came first: the leases are looked at again as the batch starts.
            started = int(time.time() * 1000)
            members = [i for i in group if self.mine(records[i], started) is not None]
            if len(members) == 1:
                answers[members[0]] = self.handle(records[members[0]], state)
            if len(members) <= 1:
                continue
            batch = [records[i] for i in members]
            try:
                answered = self._run_together(manifest_cid, batch, started)
            except Exception as exc:
                log.info("a batch of %d jobs ran one by one: %s", len(batch), exc)
                answered = [self.handle(record, state) for record in batch]
            for index, outputs in zip(members, answered, strict=True):
                answers[index] = outputs
        return answers

    def together(self, first: Record[Any], record: Record[Any]) -> bool:
        """Whether an assignment joins the batch `first` began (the runtime commits, and so
        sends the answers, after each batch: a job alone is answered as soon as it ran)."""
        keys = [self._key_of(r) for r in (first, record)]
        return keys[0] is not None and keys[0] == keys[1]

    def _key_of(self, record: Record[Any]) -> tuple[str, int] | None:
        assignment = record.event
        mine = isinstance(assignment, JobAssigned) and self.address in assignment.nodes
        return self._batch_key(assignment) if mine and assignment.job is not None else None

    def _batch_key(self, assignment: JobAssigned) -> tuple[str, int] | None:
        """Which batch a job may join (its model, and for a generation its `batch_group`;
        -1 for an encoder's), None when it runs alone: training, streamed, several
        choices, a model without a cache or not loaded yet (its first job reports the
        load), an input that does not parse (it fails alone, with its own answer)."""
        job = assignment.job
        assert job is not None
        manifest_cid = job.params.get("manifest_cid", "")
        model = self.models.loaded(manifest_cid)
        if job.kind == TRAINING or job.params.get("stream") == "1" or model is None:
            return None
        try:
            request = json.loads(job.input or b"")
            if not isinstance(request, dict):
                return None
            if model.encodes_together():
                return manifest_cid, -1
            if not model.batchable(request):
                return None
            return manifest_cid, model.batch_group(request)
        except Exception:
            return None

    def _run_together(
        self, manifest_cid: str, records: Sequence[Record[Any]], received_ms: int
    ) -> list[Sequence[Output]]:
        model, _ = self.load(manifest_cid)
        assignments = [r.event for r in records]
        jobs = [a.job for a in assignments]
        requests = [json.loads(j.input or b"") for j in jobs]
        self.in_flight += len(jobs)
        try:
            started = time.perf_counter()
            if model.encodes_together():
                done = [encoded(model, *answer) for answer in model.encode_together(requests)]
            else:
                generations = model.generate_together(requests, [j.job_id for j in jobs])
                done = [
                    (g.output(), GENERATION_SCHEME, generation_fingerprint(g.chosen_logits))
                    for g in generations
                ]
            compute_ms = int((time.perf_counter() - started) * 1000)
        finally:
            self.in_flight -= len(jobs)
        shares = batch_shares(compute_ms, [work_of(output) for output, _, _ in done])
        answers: list[Sequence[Output]] = []
        for record, assignment, job, (output, scheme, fingerprint), share in zip(
            records, assignments, jobs, done, shares, strict=True
        ):
            timings = Timings(
                queue_ms=max(0, received_ms - job.submitted_at_ms), load_ms=0, compute_ms=share
            )
            result = self.signed_result(
                assignment, output, scheme, fingerprint, timings, model.provider, model.threads
            )
            answers.append(self.outputs_of(dataclasses.replace(result, cause=record.position)))
        return answers

    def outputs_of(self, result: JobResult) -> list[Output]:
        outputs = [Output(RESULTS, result, key=hex_key(result.job_id))]
        if result.fingerprint_scheme == TRAINING_SCHEME:
            outputs.append(Output(PROOFS, self.proof(result), key=hex_key(result.job_id)))
        return outputs

    def handle(self, record: Record[Any], state: RocksStore) -> Sequence[Output]:
        now = int(time.time() * 1000)
        assignment = self.mine(record, now)
        if assignment is None:
            return ()
        self.in_flight += 1
        try:
            result = self.result_for(assignment, now)
        except (MemoryError, JobInputError) as exc:  # the job's fault: OverBudgetError, an
            # allocation that failed anyway, an input no node could run
            log.warning("job 0x%s failed: %s", assignment.job_id.hex(), exc)
            result = self.failure_for(assignment, now, exc)
        except Exception:
            log.exception("job 0x%s failed", assignment.job_id.hex())
            return ()  # not answered: the lease expires and the matcher reassigns it
        finally:
            self.in_flight -= 1
        return self.outputs_of(dataclasses.replace(result, cause=record.position))

    def result_for(self, assignment: JobAssigned, received_ms: int) -> JobResult:
        job = assignment.job
        assert job is not None
        self.attempt = assignment.attempt
        manifest_cid = job.params.get("manifest_cid", "")
        if job.kind == TRAINING:
            provider = "torch-cpu"
            started = time.perf_counter()
            output, scheme, fingerprint = self.train(job)
            load_ms = 0
            threads = self.settings.worker_threads
        else:
            model, load_ms = self.load(manifest_cid)
            provider, threads = model.provider, model.threads
            started = time.perf_counter()
            output, scheme, fingerprint = self.execute(model, job)
        compute_ms = int((time.perf_counter() - started) * 1000)
        timings = Timings(
            queue_ms=max(0, received_ms - job.submitted_at_ms),
            load_ms=load_ms,
            compute_ms=compute_ms,
        )
        return self.signed_result(
            assignment, output, scheme, fingerprint, timings, provider, threads
        )

    def load(self, manifest_cid: str) -> tuple[LoadedModel, int]:
        """A model from the cache, and how long loading it took now (0: it was loaded);
        its memory, estimated and measured, goes to the metrics when it loads."""
        model, load_ms = self.models.load(manifest_cid)
        if load_ms:
            name = str(model.manifest.document.get("name", manifest_cid))
            MODEL_MEMORY.labels(name, "estimated").set(model.weights_bytes)
            MODEL_MEMORY.labels(name, "measured").set(model.measured_bytes)
        return model, load_ms

    def failure_for(self, assignment: JobAssigned, received_ms: int, exc: Exception) -> JobResult:
        """The signed answer that this node could not run the job, and why."""
        job = assignment.job
        assert job is not None
        output = failure_output(getattr(exc, "code", "out_of_memory"), str(exc))
        timings = Timings(
            queue_ms=max(0, received_ms - job.submitted_at_ms), load_ms=0, compute_ms=0
        )
        return self.signed_result(
            assignment, output, FAILED_SCHEME, b"", timings, "none", self.settings.worker_threads
        )

    def signed_result(
        self,
        assignment: JobAssigned,
        output: bytes,
        scheme: str,
        fingerprint: bytes,
        timings: Timings,
        provider: str,
        threads: int,
    ) -> JobResult:
        """This node's signed result of an assigned job: its output, or its failure."""
        job = assignment.job
        assert job is not None
        record = JobResult(
            job_id=job.job_id,
            node=self.address,
            attempt=assignment.attempt,
            output_cid=cid_of(output),
            output_digest=hashlib.sha256(output).digest(),
            output_size=len(output),
            fingerprint_scheme=scheme,
            fingerprint=fingerprint,
            timings=timings,
            hardware=HardwareSnapshot(
                device_name=self.hardware.device_name,
                vram_bytes=self.hardware.memory_bytes,
                driver_version=self.hardware.driver_version,
                execution_provider=provider,
                threads=threads,
            ),
            completed_at_ms=int(time.time() * 1000),
            signature=b"",
            output=output,
        )
        return dataclasses.replace(record, signature=self.sign_result(record))

    def execute(self, model: LoadedModel, job: JobSubmitted) -> tuple[bytes, str, bytes]:
        if job.params.get("stream") != "1":
            return execute(model, job)

        batch = TokenBatch(job.job_id, self.address, self.attempt)

        def stream(streamed: StreamedToken) -> None:
            # Not awaited: progress only; the signed result that follows is what counts.
            for event in batch.add(streamed, time.monotonic()):
                self.producer.send(TOKENS, event, key=hex_key(job.job_id))

        try:
            return execute(model, job, stream)
        finally:
            for event in batch.rest():
                self.producer.send(TOKENS, event, key=hex_key(job.job_id))

    def train(self, job: JobSubmitted) -> tuple[bytes, str, bytes]:
        """Run a training job; every epoch's checkpoint is published by CID as it ends."""
        manifest_cid = job.params["manifest_cid"]
        _, source = self.models.unpacked(manifest_cid, "source")
        dataset = self.models.source.file(job.dataset_cid or "")
        trainer = Trainer(
            source,
            self.models.tokenizer(manifest_cid),
            dataset,
            TrainingSpec.of(job),
            self.settings.worker_threads,
        )
        epochs = []
        for epoch in trainer.run():
            cid = self.models.source.publish(epoch.checkpoint)
            epochs.append(
                {
                    "epoch": epoch.epoch,
                    "checkpoint_cid": cid,
                    "loss": epoch.loss,
                    "samples": epoch.samples,
                }
            )
            log.info("job 0x%s epoch %d: loss %.4f", job.job_id.hex()[:12], epoch.epoch, epoch.loss)
        losses = np.asarray([e["loss"] for e in epochs], dtype="<f4").tobytes()
        return output_document(epochs), TRAINING_SCHEME, losses

    def proof(self, result: JobResult) -> JobProof:
        """The training trace behind a training result (lattice.jobs.proofs)."""
        output = result.output or b""
        epochs = json.loads(output)["epochs"]
        commitment = keccak(output)
        return JobProof(
            job_id=result.job_id,
            node=self.address,
            attempt=result.attempt,
            kind="TRAINING_TRACE",
            commitment=commitment,
            epochs=tuple(
                EpochCheckpoint(
                    epoch=e["epoch"],
                    checkpoint_cid=e["checkpoint_cid"],
                    loss_ppm=int(e["loss"] * 1_000_000),
                    samples=e["samples"],
                )
                for e in epochs
            ),
            signature=sign(self.key, keccak(b"lattice-proof-v1" + result.job_id + commitment)),
            cause=result.cause,
        )

    def sign_result(self, record: JobResult) -> bytes:
        return sign(self.key, result_hash(record, self.settings.chain_id))

    # -- the process ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Position the job loop at the end of the assignments, and only then announce the
        node (an assignment made before the node could read it would wait for its lease),
        heartbeat, and serve until `stop`."""
        store = RocksStore(self.work / "state")
        config = self.settings.kafka_config
        runtime = Runtime(self, store, self.bootstrap, producer=self.producer, kafka_config=config)
        try:
            runtime.open()
            if stop.is_set():
                return
            self.announce()
            beat = threading.Thread(target=self._beat, args=(stop,), name="heartbeat", daemon=True)
            beat.start()
            runtime.run(stop)
        finally:
            runtime.close()
            store.close()
            self.producer.close()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_EVERY_S):
            try:
                self.producer.send(HEARTBEATS, self.heartbeat(), key=hex_key(self.address))
            except Exception:  # a missed heartbeat is not fatal; the next one may land
                log.exception("heartbeat failed")
