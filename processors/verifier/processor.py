"""The verifier: job results in; verdicts, settlement transactions and settlements out.

For each result it gathers what the result must be checked against — the signed request
(`jobs.submitted`), the assignment it answers (`jobs.assigned`), the node's registration
(`gpu.nodes`) and the model's manifest (`models`) — waiting while any of them has not
arrived yet, then runs the checks of `processors.verifier.core`. Results of redundant jobs,
and a seeded share (`verify_bps`) of the others, are re-executed on the verifier's own
runtime (the workers' code, `processors.compute`) to compare numbers within tolerance.
A node's signed failure (`core.FAILED_SCHEME`: it could not run the job, e.g. over its
memory budget) is not re-executed: its verdict is INCONCLUSIVE and the job is refunded. A
re-execution the verifier's own budget (`verifier_memory_bytes`, a fixed figure, so every
replica decides alike) would not hold is skipped, with a check that says so, and the
result is judged as an unsampled one: the verifier never crash-loops on a model too big
for it.

Then money: an accepted result is paid by `JobMarket.settle` (reward formula in
`processors.market.economics`), at most the job's maximum price over all its paid results,
and only the first accepted answer of a job (the first two of a redundant one): a job
reassigned when its lease ran out may be answered by both nodes, and is paid once;
a rejected one pays nothing and slashes the node's stake; a late one, or a job the matcher
expired, is refunded (a zero-charge settlement, so the ledger records it). Each paid or
refunded (job, node) settles once: duplicates of a result, and results arriving after the
job was paid, get a verdict but no second payment. Settlements are transactions signed with
the settler's key and produced to `lattice.tx.submitted`, then recorded on
`lattice.jobs.settled`; all three are outputs of the result that caused them, which the
runtime commits and sends together.

A crash can still fall between a verdict and its money on the log (the log is the state:
the verifier keeps it in memory and reads it all from the beginning at every start, its own
outputs and the settler's partition of `lattice.tx.submitted` included), and a restart
finishes the step: a verdict with no settlement is paid from that verdict (not judged
again), and a settlement transaction with no record is recorded as sent (not signed again,
so no settlement is paid twice or lost and the settler's nonces stay gapless: they are
counted from the settler's own transactions on the log). It decides nothing until it has
caught up (its first tick); live, it folds its outputs as it makes them and skips them when
they come back.

A job a contract asked for through the `InferenceOracle` (`processors.market.oracle`) is paid
from the oracle's escrow, once: an accepted result by `fulfil` (the node, the fee, the rest
back, and the verified answer to the contract's callback), an expired, failed or rejected
job by `refund`; a rejected node is slashed on `JobMarket` as for any job. Its settlements
are recognised on the log like `JobMarket`'s.

Verdicts and amounts depend only on each job's own events (all keyed by job id, so in one
partition's order), which is what makes a replay reproduce them exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from eth_hash.auto import keccak

from processors.abc import Output, Pace, Processor, Subscription
from processors.compute.budget import JobInputError, OverBudgetError
from processors.compute.generation import Sampling, SamplingError, choices_of
from processors.compute.models import (
    CLASSIFICATION,
    EMBEDDING,
    GENERATIVE,
    IMAGE_CLASSIFICATION,
    IMAGE_TEXT,
    PAST_KEYS,
)
from processors.compute.runtime import BlockSource, FetchError, ModelCache, label_scores
from processors.compute.training import Trainer, TrainingSpec, weights_array
from processors.execution.genesis import INFERENCE_ORACLE, JOB_MARKET, address_of
from processors.execution.transactions import ChainRules, decode_transaction, submitted_event
from processors.market.chain import Settlement, settle_call, settlement_of, signed_call
from processors.market.content import Blockstore, ContentError
from processors.market.economics import Reward, refund, reward
from processors.market.ipfs import ipfs_home
from processors.market.jobs import (
    ORACLE_REQUEST,
    TRAINING,
    InvalidSignature,
    is_oracle_job,
    job_signer,
)
from processors.market.lifecycle import Job
from processors.market.oracle import (
    CALLBACK_GAS,
    callback_output,
    fulfil_call,
    oracle_settlement_of,
    refund_call,
    request_digest,
    settlement_gas,
)
from processors.state import MemoryStore
from processors.verifier import core
from schemas.events import (
    GpuNodeRegistration,
    JobAssigned,
    JobResult,
    JobSettled,
    JobSubmitted,
    JobVerdict,
    ModelManifest,
    Position,
    TransactionSubmitted,
)
from streams.kafka import LOW_LATENCY_READ, Record
from streams.metrics import VERIFICATIONS
from streams.settings import Settings
from streams.topics import TopicSpec, hex_key, topic

log = logging.getLogger(__name__)

SUBMITTED = topic("jobs.submitted")
ASSIGNED = topic("jobs.assigned")
RESULTS = topic("jobs.results")
VERDICTS = topic("jobs.verdicts")
SETTLED = topic("jobs.settled")
TX_SUBMITTED = topic("tx.submitted")
INPUTS = (topic("gpu.nodes"), topic("models"), SUBMITTED, ASSIGNED, VERDICTS, SETTLED, RESULTS)
ZERO = bytes(20)


def settlement_id(job_id: bytes, node: bytes) -> bytes:
    return keccak(job_id + node)


def side_topics(prefix: str) -> dict[str, TopicSpec]:
    """The outputs of a verifier replaying into `<prefix>.verdicts`, `.settled` and `.tx`."""
    live = {"verdicts": VERDICTS, "settled": SETTLED, "tx": TX_SUBMITTED}
    return {name: dataclasses.replace(spec, name=f"{prefix}.{name}") for name, spec in live.items()}


class Verifier(Processor[MemoryStore]):
    role = "verifier"
    pace = Pace(poll_s=0.05, tick_s=0.05, read_config=LOW_LATENCY_READ)

    def __init__(
        self,
        settings: Settings,
        settler_key: bytes,
        peers: list[str] | None = None,
        replay_into: str | None = None,
    ) -> None:
        """`replay_into`: a prefix; the verifier then ignores the live verdicts and
        settlements and writes its outputs to `<prefix>.verdicts`, `<prefix>.settled` and
        `<prefix>.tx` instead (a replay to compare). It reads those back as its own, like
        the live verifier reads its own: a fresh prefix starts from nothing (create the
        topics first: `side_topics`)."""
        self.settings = settings
        self.key = settler_key
        self.address = address_of(settler_key)
        self.name = f"{settings.client_id}-verifier"
        self.outputs_to = {"verdicts": VERDICTS, "settled": SETTLED, "tx": TX_SUBMITTED}
        if replay_into is not None:
            self.outputs_to = side_topics(replay_into)
            self.name = f"{self.name}-{replay_into}"
        self.rules = ChainRules(settings.chain_id, settings.max_tx_bytes, settings.block_gas_limit)
        self.jobs: dict[bytes, Job] = {}
        self.waiting: dict[bytes, list[tuple[JobResult, Position]]] = {}
        self.registrations: dict[bytes, GpuNodeRegistration] = {}
        self.manifests: dict[str, ModelManifest] = {}
        self.nonce = 0
        # Settlement id -> (tx hash, call) of every settlement transaction this settler has
        # on the log: after a crash between a transaction and its `jobs.settled` record,
        # the ledger will run that transaction, so it is recorded, never signed again.
        self.sent: dict[bytes, tuple[bytes, Settlement]] = {}
        self.live = False
        work = Path(settings.data_dir) / "verifier"
        self.models = ModelCache(
            BlockSource(
                Blockstore(work / "blockstore"), peers or [], ipfs_home=ipfs_home(settings)
            ),
            work,
            threads=1,
            use_gpu=False,
            memory_budget=settings.verifier_memory_bytes,
        )

    def subscriptions(self) -> Sequence[Subscription]:
        own = {VERDICTS.name: self.outputs_to["verdicts"], SETTLED.name: self.outputs_to["settled"]}
        # A job's path, fed the moment it is durable: settled sooner, fetched seldom.
        path = {SUBMITTED.name, ASSIGNED.name, RESULTS.name}
        inputs = [Subscription(own.get(spec.name, spec), fed=spec.name in path) for spec in INPUTS]
        # Keyed by sender: one partition holds every transaction of the settler's.
        inputs.append(Subscription(self.outputs_to["tx"], key=hex_key(self.address)))
        return inputs

    def job(self, job_id: bytes) -> Job:
        return self.jobs.get(job_id) or Job(job_id)

    # -- folding ----------------------------------------------------------------------------

    def handle(self, record: Record[Any], state: MemoryStore) -> Sequence[Output]:
        event = record.event
        if isinstance(event, TransactionSubmitted):
            self._sent_before(event)
            return ()
        if isinstance(event, GpuNodeRegistration):
            self.registrations[event.node] = event
            return self.drain(list(self.waiting))
        if isinstance(event, ModelManifest):
            self.manifests[event.manifest_cid] = event
            return self.drain(list(self.waiting))
        if isinstance(event, JobResult):
            self.waiting.setdefault(event.job_id, []).append((event, record.position))
        elif isinstance(event, (JobVerdict, JobSettled)):
            if self.live:
                return ()  # live, our own outputs were folded when we made them
            self.jobs[event.job_id] = self.job(event.job_id).apply(event)
        elif isinstance(event, (JobSubmitted, JobAssigned)):
            job = self.job(event.job_id)
            if isinstance(event, JobAssigned) and job.assignment(event.attempt) is not None:
                return ()
            self.jobs[event.job_id] = job.apply(event)
        else:
            return ()
        return self.drain([event.job_id])

    def _sent_before(self, tx_record: TransactionSubmitted) -> None:
        """A settler's transaction on the log: its nonce is used, and a settlement it
        carries is sent (after a crash: recorded, not signed again)."""
        if tx_record.sender != self.address:
            return
        self.nonce = max(self.nonce, tx_record.nonce + 1)
        tx = decode_transaction(tx_record.raw, self.rules)
        call = None
        if tx.to == JOB_MARKET:
            call = settlement_of(tx.data)
        elif tx.to == INFERENCE_ORACLE:
            call = oracle_settlement_of(tx.data)
        if call is not None:
            self.sent.setdefault(call.settlement_id, (tx.hash, call))

    def tick(self, now_ms: int, state: MemoryStore) -> Sequence[Output]:
        """The first tick comes once caught up: from then on the verifier judges and pays."""
        if self.live:
            return ()
        self.live = True
        log.info("verifier caught up; settler 0x%s nonce %d", self.address.hex(), self.nonce)
        return self.drain(list(self.jobs))

    def drain(self, job_ids: Sequence[bytes]) -> list[Output]:
        """Judge what can be judged and refund what must be, for these jobs (once live)."""
        if not self.live:
            return []
        outputs: list[Output] = []
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is None or job.submitted is None:
                continue
            expiry = job.expiry
            # Refunded once, whether the node's (unpaid) verdict came before or after.
            if expiry is not None and ZERO not in job.settled_for and not _paid_out(job):
                outputs += self.settle(
                    job_id, ZERO, refund(job.submitted.max_price_wei), 0, expiry.cause
                )
            still = []
            for result, position in self.waiting.pop(job_id, []):
                if self.ready(self.jobs[job_id], result):
                    outputs += self.judge(job_id, result, position)
                else:
                    still.append((result, position))
            if still:
                self.waiting[job_id] = still
        return outputs

    def ready(self, job: Job, result: JobResult) -> bool:
        assert job.submitted is not None
        cid = job.submitted.params.get("manifest_cid", "")
        return (
            job.assignment(result.attempt) is not None
            and result.node in self.registrations
            and cid in self.manifests
        )

    # -- judging --------------------------------------------------------------------------

    def checks(self, job: Job, result: JobResult) -> list[core.Check]:
        record = job.submitted
        assignment = job.assignment(result.attempt)
        assert record is not None and assignment is not None
        registration = self.registrations[result.node]
        manifest = self.manifests[record.params["manifest_cid"]]
        checks = [
            core.check_signature(result, self.settings.chain_id),
            core.check_assignment(result, assignment),
            core.check_output(result),
            core.check_deadline(result, record),
        ]
        if not all(c.passed for c in checks[:3]):
            return checks  # nothing more to learn from a result that is not the node's own
        failure = core.check_failure(result)
        if failure is not None:
            return [*checks, failure]
        sampled = int.from_bytes(keccak(record.job_id + result.node + b"spot")[:4]) % 10_000
        if assignment.redundant or sampled < self.settings.verify_bps:
            try:
                if record.kind == TRAINING:
                    check, task_flops = self.retrain(record, result, manifest)
                else:
                    check, task_flops = self.reexecute(record, result)
            except OverBudgetError as exc:
                check = core.Check("re-execution", True, f"skipped: {exc}")
                task_flops = self.claimed_flops(record, result, manifest)
            checks.append(check)
        else:
            task_flops = self.claimed_flops(record, result, manifest)
        checks.append(core.check_timing(result, registration, task_flops))
        return checks

    def claimed_flops(self, job: JobSubmitted, result: JobResult, manifest: ModelManifest) -> int:
        """The work a result claims to have done, from its own output."""
        params = manifest.parameter_count
        try:
            claimed = json.loads(result.output or b"")
            if job.kind == TRAINING:
                spec = TrainingSpec.of(job)
                tokens = int(claimed["epochs"][0]["samples"]) * spec.seq_len
                return core.training_flops(params, tokens, spec.epochs)
            prompt = int(claimed["prompt_tokens"])
            if "embeddings" in claimed or "logits" in claimed:
                return core.encoder_flops(params, prompt)
            cached = any(i.name == PAST_KEYS for i in manifest.inputs)
            return sum(
                core.generation_flops(params, prompt, len(choice["token_ids"]), cached)
                for choice in choices_of(claimed)
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return 0

    def retrain(
        self, job: JobSubmitted, result: JobResult, manifest: ModelManifest
    ) -> tuple[core.Check, int]:
        """Re-run one seeded epoch from the node's previous checkpoint and compare."""
        spec = TrainingSpec.of(job)
        unreadable = core.Check("epoch re-run", False, "not a training result for this job"), 0
        try:
            epochs = json.loads(result.output or b"")["epochs"]
            losses = np.frombuffer(result.fingerprint, dtype="<f4")
        except (ValueError, KeyError, TypeError):
            return unreadable
        if not len(epochs) == spec.epochs == len(losses):
            return unreadable
        number = int.from_bytes(keccak(job.job_id + result.node + b"epoch")[:4]) % len(epochs)
        cid = job.params["manifest_cid"]
        try:
            previous = (
                self.models.source.file(epochs[number - 1]["checkpoint_cid"]) if number else None
            )
            claimed = weights_array(self.models.source.file(epochs[number]["checkpoint_cid"]))
            dataset = self.models.source.file(job.dataset_cid or "")
        except (FetchError, ContentError, ValueError) as exc:
            return core.Check("epoch re-run", False, f"checkpoint or dataset unavailable: {exc}"), 0
        _, source = self.models.unpacked(cid, "source")
        trainer = Trainer(source, self.models.tokenizer(cid), dataset, spec, threads=1)
        again = trainer.rerun(number, previous)
        check = core.check_training_epoch(
            number, claimed, weights_array(again.checkpoint), float(losses[number]), again.loss
        )
        tokens = again.samples * spec.seq_len
        return check, core.training_flops(manifest.parameter_count, tokens, spec.epochs)

    def reexecute(self, job: JobSubmitted, result: JobResult) -> tuple[core.Check, int]:
        model, _ = self.models.load(job.params["manifest_cid"])
        output = result.output or b""
        document = model.manifest.document
        if model.manifest.task in (EMBEDDING, CLASSIFICATION, IMAGE_CLASSIFICATION, IMAGE_TEXT):
            request = json.loads(job.input or b"{}")
            try:
                if model.manifest.task == EMBEDDING:
                    claimed, vectors = model.embed(request)
                    check = core.check_embeddings(output, vectors, result.fingerprint)
                else:
                    claimed, vectors = model.classify(request)
                    multi = document.get("problem_type") == "multi_label_classification"
                    check = core.check_classification(
                        output,
                        vectors,
                        result.fingerprint,
                        partial(label_scores, multi_label=multi),
                        _labels(document, request),
                    )
            except (JobInputError, ValueError) as exc:
                return core.Check("re-execution", False, f"the job's input cannot run: {exc}"), 0
            read = int(json.loads(claimed)["prompt_tokens"])
            return check, core.encoder_flops(document["parameter_count"], read)
        if model.manifest.task not in GENERATIVE:
            recomputed = model.run_tensors(job.input or b"")  # checks its budget first
            check = core.check_tensors(output, recomputed, result.fingerprint, job.job_id)
            return check, 0
        request = json.loads(job.input or b"{}")
        prompt = model.prompt(request)
        try:
            sampling = Sampling.of(request, job.job_id)
        except SamplingError as exc:
            return core.Check("re-execution", False, f"the job's input cannot run: {exc}"), 0
        try:
            tokens = [[int(t) for t in c["token_ids"]] for c in choices_of(json.loads(output))]
        except (ValueError, KeyError, TypeError, AttributeError):
            return core.Check("re-execution", False, "output is not a generation document"), 0
        vocabulary = int(model.session.get_outputs()[0].shape[-1] or 0) or None
        if vocabulary is not None and any(not 0 <= t < vocabulary for ids in tokens for t in ids):
            return core.Check("re-execution", False, "tokens out of the vocabulary"), 0
        # One teacher-forced pass over each choice's whole sequence: its logits everywhere.
        longest = max((len(ids) for ids in tokens), default=0)
        model.within("re-execution", model.generation_needs(len(prompt) + longest, 0))
        logits = [model.continuation(prompt, ids) for ids in tokens]
        check = core.check_generation(
            output,
            result.fingerprint,
            logits,
            len(prompt),
            model.eos_token_id,
            sampling,
            model.decode,
        )
        params = model.manifest.document["parameter_count"]
        cached = model.kv_cache is not None
        flops = sum(core.generation_flops(params, len(prompt), len(ids), cached) for ids in tokens)
        return check, flops

    def judge(self, job_id: bytes, result: JobResult, position: Position) -> list[Output]:
        """Verdict, then money. A verdict on the log whose money is not (a crash between
        the two) is paid now from that verdict, not judged again. A node's signed answer is
        judged once (a copy of it gets nothing); a result it did not sign is anyone's
        writing, judged on its own, and takes no place of the node's real answer."""
        outputs: list[Output] = []
        mine = [v for v in self.jobs[job_id].verdicts if v.node == result.node]
        verdict = next((v for v in mine if v.cause == position), None)
        if verdict is None:
            if any(_check(v, "signature") for v in mine):
                return outputs  # a duplicate of the node's answer: judged (and settled) once
            verdict = self.verdict(self.jobs[job_id], result, position)
            self.jobs[job_id] = self.jobs[job_id].apply(verdict)
            outputs.append(Output(self.outputs_to["verdicts"], verdict, key=hex_key(job_id)))
        return outputs + self.pay(job_id, result, verdict)

    def verdict(self, job: Job, result: JobResult, position: Position) -> JobVerdict:
        record = job.submitted
        assignment = job.assignment(result.attempt)
        assert record is not None and assignment is not None
        checks = self.checks(job, result)
        outcome = core.outcome(checks)
        VERIFICATIONS.labels(outcome).inc()
        reputation = next(
            (c.reputation_bps for c in assignment.candidates if c.node == result.node), 5_000
        )
        performance = core.performance_bps(record, result) if outcome == core.ACCEPTED else 0
        log.info("job 0x%s node 0x%s: %s", record.job_id.hex()[:12], result.node.hex()[:8], outcome)
        return JobVerdict(
            job_id=record.job_id,
            node=result.node,
            verifier=self.address,
            outcome=outcome,
            checks=tuple(c.record() for c in checks),
            performance_bps=performance,
            reputation_bps=reputation,
            seed=keccak(record.job_id + result.node + b"spot"),
            cause=position,
        )

    def pay(self, job_id: bytes, result: JobResult, verdict: JobVerdict) -> list[Output]:
        """What a verdict means in money: the node paid, slashed, or the requester refunded."""
        job = self.jobs[job_id]
        record = job.submitted
        assert record is not None
        node = result.node
        if verdict.outcome == core.REJECTED:
            return self.reject(job_id, node, verdict)
        if node in job.settled_for:
            return []
        cause = verdict.cause
        if verdict.outcome == core.ACCEPTED:
            price = self.registrations[node].price_wei_per_hour
            budget = max(record.max_price_wei - job.charged, 0)
            # A settlement sent before a restart is recorded whatever came since: the
            # ledger runs it. Otherwise the job's budget and its runs may be spent.
            if settlement_id(job_id, node) not in self.sent:
                if budget == 0 or len(self.rewarded(job)) >= job.runs:
                    return []  # earlier answers were paid: the job's budget or its runs
                if is_oracle_job(record) and _paid_out(job):
                    return []  # the escrow went to an earlier result, or back
            owed = reward(
                price,
                result.timings.compute_ms,
                budget,
                verdict.performance_bps,
                verdict.reputation_bps,
            )
            return self.settle(job_id, node, owed, 0, cause, answer=result)
        if not _paid_out(job) and ZERO not in job.settled_for:
            return self.settle(job_id, ZERO, refund(record.max_price_wei), 0, cause)
        return []

    def rewarded(self, job: Job) -> set[bytes]:
        """Nodes paid for an accepted answer of the job: settled on the log, or by a
        transaction sent before a restart whose record is not read back yet."""
        accepted = {v.node for v in job.verdicts if v.outcome == core.ACCEPTED}
        return {
            node
            for node in accepted
            if node in job.settled_for or settlement_id(job.job_id, node) in self.sent
        }

    def reject(self, job_id: bytes, node: bytes, verdict: JobVerdict) -> list[Output]:
        """A rejected result. One its node did not sign is anyone's writing: it moves no
        money and settles nothing (the node's own answer, or the job's expiry, will). A
        signed one slashes the node a fixed figure (the stake a registration declares is the
        node's own word); for an oracle's job the escrow also goes back to the contract at
        once, when the node was the one assigned (anyone's signed junk must not cancel a
        request). Each step once, the second also after a crash between the two."""
        if not _check(verdict, "signature"):
            return []
        outputs: list[Output] = []
        if node not in self.jobs[job_id].settled_for:
            slash = self.settings.slash_wei
            outputs += self.settle(job_id, node, Reward(0, 0, 0), slash, verdict.cause)
        job = self.jobs[job_id]
        assert job.submitted is not None
        escrowed = is_oracle_job(job.submitted) and _check(verdict, "assignment")
        if escrowed and not _paid_out(job) and ZERO not in job.settled_for:
            price = job.submitted.max_price_wei
            outputs += self.settle(job_id, ZERO, refund(price), 0, verdict.cause)
        return outputs

    # -- money ----------------------------------------------------------------------------

    def settle(
        self,
        job_id: bytes,
        provider: bytes,
        owed: Reward,
        slash: int,
        cause: Position,
        answer: JobResult | None = None,
    ) -> list[Output]:
        """Settle (job, provider); `answer`: the accepted result that pays (for an oracle's
        job, its output goes to the contract)."""
        job = self.jobs[job_id]
        record = job.submitted
        assert record is not None
        try:
            signer = job_signer(record, self.settings.chain_id)
        except InvalidSignature:
            return []  # never assigned: the matcher dropped it too
        refund_wei = record.max_price_wei - job.charged - owed.charged_wei
        oracle = is_oracle_job(record)
        # An oracle's job is paid or refunded on its escrow; on JobMarket it only slashes.
        on_escrow = oracle and (answer is not None or provider == ZERO)
        call = Settlement(
            settlement_id(job_id, provider),
            signer,
            signer if oracle else record.requester,
            provider,
            owed.paid_wei,
            owed.fee_wei,
            max(refund_wei, 0) if on_escrow or not oracle else 0,
            slash,
        )
        outputs: list[Output] = []
        earlier = self.sent.get(call.settlement_id)
        if earlier is not None:
            tx_hash, sent = earlier
            if sent != call:
                log.error(
                    "settlement 0x%s was sent as %s, now computes %s", tx_hash.hex(), sent, call
                )
            call = sent  # what the ledger runs is what is recorded
            log.warning(
                "job 0x%s: settlement tx 0x%s was sent before a restart; recording it",
                job_id.hex()[:12],
                tx_hash.hex(),
            )
        else:
            to, data, gas = self.settlement_tx(job, call, answer, on_escrow)
            raw = signed_call(self.key, self.settings.chain_id, self.nonce, to, data, gas=gas)
            tx = decode_transaction(raw, self.rules)
            outputs.append(
                Output(
                    self.outputs_to["tx"],
                    submitted_event(tx, record.submitted_at_ms, "verifier"),
                    key=hex_key(tx.sender),
                )
            )
            self.nonce += 1
            tx_hash = tx.hash
            self.sent[call.settlement_id] = (tx_hash, call)
        settled = JobSettled(
            job_id=job_id,
            provider=provider,
            requester=record.requester,
            transaction_hash=tx_hash,
            paid_wei=call.paid,
            fee_wei=call.fee,
            refund_wei=call.refund,
            slashed_wei=call.slash,
            cause=cause,
        )
        self.jobs[job_id] = job.apply(settled)
        outputs.append(Output(self.outputs_to["settled"], settled, key=hex_key(job_id)))
        return outputs

    def settlement_tx(
        self, job: Job, call: Settlement, answer: JobResult | None, on_escrow: bool
    ) -> tuple[bytes, bytes, int]:
        """(to, data, gas) of a settlement: `JobMarket.settle`, or on an oracle's escrow its
        `fulfil` (with the accepted answer) or `refund`."""
        record = job.submitted
        assert record is not None
        if not on_escrow:
            return JOB_MARKET, settle_call(*dataclasses.astuple(call)), 200_000
        request_id = int(record.params[ORACLE_REQUEST])
        callback_gas = int(record.params.get(CALLBACK_GAS, "0"))
        if answer is None:
            data = refund_call(request_id, call)
        else:
            digest = request_digest(record.params["manifest_cid"], record.input or b"")
            data = fulfil_call(request_id, call, digest, callback_output(answer.output or b""))
        return INFERENCE_ORACLE, data, settlement_gas(callback_gas, data)


def _check(verdict: JobVerdict, name: str) -> bool:
    """Whether the verdict's checks of that name passed (the signature: whether the judged
    result carried its node's signature)."""
    return all(c.passed for c in verdict.checks if c.name == name)


def _paid_out(job: Job) -> bool:
    """Whether the job's money is spent: charged to a deposit, or (an oracle's job) its
    escrow fulfilled or refunded, which every such settlement moves some of."""
    if job.charged:
        return True
    if job.submitted is None or not is_oracle_job(job.submitted):
        return False
    return any(s.paid_wei + s.fee_wei + s.refund_wei > 0 for s in job.settlements)


def _labels(document: dict[str, Any], request: dict[str, Any]) -> list[str]:
    """A classifier's label names: the model's own, or an image-text job's texts."""
    texts = request.get("texts")
    return list(document.get("labels") or ([texts] if isinstance(texts, str) else texts or []))
