"""The verifier: job results in; verdicts, settlement transactions and settlements out.

For each result it gathers what the result must be checked against — the signed request
(`jobs.submitted`), the assignment it answers (`jobs.assigned`), the node's registration
(`gpu.nodes`) and the model's manifest (`models`) — waiting while any of them has not
arrived yet, then runs the checks of `processors.verifier.core`. Results of redundant jobs,
and a seeded share (`verify_bps`) of the others, are re-executed on the verifier's own
runtime (the workers' code) to compare numbers within tolerance.

Then money: an accepted result is paid by `JobMarket.settle` (reward formula in
`processors.market.economics`), at most the job's maximum price over all its paid results;
a rejected one pays nothing and slashes the node's stake; a late one, or a job the matcher
expired, is refunded (a zero-charge settlement, so the ledger records it). Each paid or
refunded (job, node) settles once: duplicates of a result, and results arriving after the
job was paid, get a verdict but no second payment. Settlements are transactions signed with
the settler's key and produced to `lattice.tx.submitted`, then recorded on
`lattice.jobs.settled`.

A crash can fall between those steps; the log says where, and a restart finishes the step:
a verdict with no settlement is paid from that verdict (not judged again), and a settlement
transaction with no record is recorded as sent (not signed again, so no settlement is paid
twice or lost and the settler's nonces stay gapless: they are counted from the settler's
own transactions on the log).

On start it reads every input and its own outputs from the beginning: what was verdicted
or settled before is not done again. Verdicts and amounts depend only on each job's own
events (all keyed by job id, so in one partition's order), which is what makes a replay
reproduce them exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from eth_hash.auto import keccak

from gpu_worker.models import PAST_KEYS, TEXT_GENERATION
from gpu_worker.runtime import BlockSource, FetchError, ModelCache
from gpu_worker.training import Trainer, TrainingSpec, weights_array
from processors.execution.genesis import JOB_MARKET, address_of
from processors.execution.transactions import ChainRules, decode_transaction, submitted_event
from processors.market.chain import Settlement, settle_call, settlement_of, signed_call
from processors.market.content import Blockstore, ContentError
from processors.market.economics import Reward, refund, reward
from processors.market.jobs import TRAINING, InvalidSignature, job_signer
from processors.verifier import core
from streams.admin import ensure_topics
from streams.kafka import LOW_LATENCY_READ, CatchUp, Producer, Reader
from streams.metrics import VERIFICATIONS
from streams.settings import Settings
from streams.topics import TopicSpec, hex_key, partition_of, topic

log = logging.getLogger(__name__)

SUBMITTED = topic("jobs.submitted")
ASSIGNED = topic("jobs.assigned")
RESULTS = topic("jobs.results")
VERDICTS = topic("jobs.verdicts")
SETTLED = topic("jobs.settled")
TX_SUBMITTED = topic("tx.submitted")
INPUTS = (topic("gpu.nodes"), topic("models"), SUBMITTED, ASSIGNED, VERDICTS, SETTLED, RESULTS)
ZERO = bytes(20)


@dataclass
class JobFacts:
    record: dict[str, Any] | None = None
    assignments: dict[int, dict[str, Any]] = field(default_factory=dict)
    charged: int = 0
    settled_for: set[bytes] = field(default_factory=set)  # nodes paid/refunded, ZERO: expiry
    verdicts: dict[bytes, dict[str, Any]] = field(default_factory=dict)  # by node
    waiting: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)


def settlement_id(job_id: bytes, node: bytes) -> bytes:
    return keccak(job_id + node)


class Verifier:
    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        settler_key: bytes,
        peers: list[str] | None = None,
        replay_into: str | None = None,
    ) -> None:
        """`replay_into`: a prefix; the verifier then ignores the live verdicts and
        settlements and writes its outputs to `<prefix>.verdicts`, `<prefix>.settled` and
        `<prefix>.tx` instead (a replay to compare). It reads those back as its own, like
        the live verifier reads its own: a fresh prefix starts from nothing."""
        self.settings = settings
        self.outputs = {"verdicts": VERDICTS, "settled": SETTLED, "tx": TX_SUBMITTED}
        self.inputs: tuple[TopicSpec, ...] = INPUTS
        if replay_into is not None:
            self.outputs = {
                name: dataclasses.replace(spec, name=f"{replay_into}.{name}")
                for name, spec in self.outputs.items()
            }
            ensure_topics(bootstrap, list(self.outputs.values()))
            # Its own side outputs replace the live ones: a replay stopped midway resumes.
            own = {VERDICTS: self.outputs["verdicts"], SETTLED: self.outputs["settled"]}
            self.inputs = tuple(own.get(t, t) for t in INPUTS)
        self.bootstrap = bootstrap
        self.key = settler_key
        self.address = address_of(settler_key)
        self.rules = ChainRules(settings.chain_id, settings.max_tx_bytes, settings.block_gas_limit)
        self.jobs: dict[bytes, JobFacts] = {}
        self.registrations: dict[bytes, dict[str, Any]] = {}
        self.manifests: dict[str, dict[str, Any]] = {}
        self.nonce = 0
        # Settlement id -> (tx hash, call) of every settlement transaction this settler has
        # on the log: after a crash between a transaction and its `jobs.settled` record,
        # the ledger will run that transaction, so it is recorded, never signed again.
        self.sent: dict[bytes, tuple[bytes, Settlement]] = {}
        self.live = False
        work = Path(settings.data_dir) / "verifier"
        self.models = ModelCache(
            BlockSource(Blockstore(work / "blockstore"), peers or []),
            work,
            threads=1,
            use_gpu=False,
        )
        self.producer = Producer(bootstrap, client_id=f"{settings.client_id}-verifier")

    def facts(self, job_id: bytes) -> JobFacts:
        return self.jobs.setdefault(job_id, JobFacts())

    # -- folding ----------------------------------------------------------------------------

    def apply(self, schema: str, record: dict[str, Any], position: dict[str, Any]) -> None:
        if schema == "lattice.gpu.GpuNodeRegistration":
            self.registrations[record["node"]] = record
        elif schema == "lattice.models.ModelManifest":
            self.manifests[record["manifest_cid"]] = record
        elif schema == "lattice.jobs.JobSubmitted":
            facts = self.facts(record["job_id"])
            facts.record = facts.record or record
        elif schema == "lattice.jobs.JobAssigned":
            facts = self.facts(record["job_id"])
            facts.assignments.setdefault(record["attempt"], record)
        elif schema == "lattice.jobs.JobVerdict":
            self.facts(record["job_id"]).verdicts.setdefault(record["node"], record)
        elif schema == "lattice.jobs.JobSettled":
            facts = self.facts(record["job_id"])
            facts.settled_for.add(record["provider"])
            facts.charged += record["paid_wei"] + record["fee_wei"]
        elif schema == "lattice.jobs.JobResult":
            facts = self.facts(record["job_id"])
            facts.waiting.append((record, position))
        self.drain()

    def go_live(self) -> None:
        self.live = True
        log.info("verifier caught up; settler 0x%s nonce %d", self.address.hex(), self.nonce)
        self.drain()

    def drain(self) -> None:
        if not self.live:
            return
        for facts in self.jobs.values():
            if facts.record is None:
                continue
            expiry = next((a for a in facts.assignments.values() if not a["nodes"]), None)
            # Refunded once, whether the node's (unpaid) verdict came before or after.
            if expiry is not None and ZERO not in facts.settled_for and not facts.charged:
                self.settle(facts, ZERO, refund(facts.record["max_price_wei"]), 0, expiry["cause"])
            if facts.waiting:
                still = []
                for result, position in facts.waiting:
                    if not self.ready(facts, result):
                        still.append((result, position))
                    else:
                        self.judge(facts, result, position)
                facts.waiting = still

    def ready(self, facts: JobFacts, result: dict[str, Any]) -> bool:
        assert facts.record is not None
        cid = facts.record["params"].get("manifest_cid", "")
        return (
            result["attempt"] in facts.assignments
            and result["node"] in self.registrations
            and cid in self.manifests
        )

    # -- judging --------------------------------------------------------------------------

    def checks(self, facts: JobFacts, result: dict[str, Any]) -> list[core.Check]:
        job = facts.record
        assert job is not None
        assignment = facts.assignments[result["attempt"]]
        registration = self.registrations[result["node"]]
        manifest = self.manifests[job["params"]["manifest_cid"]]
        checks = [
            core.check_signature(result, self.settings.chain_id),
            core.check_assignment(result, assignment),
            core.check_output(result),
            core.check_deadline(result, job),
        ]
        if not all(c.passed for c in checks[:3]):
            return checks  # nothing more to learn from a result that is not the node's own
        sampled = int.from_bytes(keccak(job["job_id"] + result["node"] + b"spot")[:4]) % 10_000
        if assignment["redundant"] or sampled < self.settings.verify_bps:
            if job["kind"] == TRAINING:
                check, task_flops = self.retrain(job, result, manifest)
            else:
                check, task_flops = self.reexecute(job, result)
            checks.append(check)
        else:
            task_flops = self.claimed_flops(job, result, manifest)
        checks.append(core.check_timing(result, registration, task_flops))
        return checks

    def claimed_flops(
        self, job: dict[str, Any], result: dict[str, Any], manifest: dict[str, Any]
    ) -> int:
        """The work a result claims to have done, from its own output."""
        params = manifest["parameter_count"]
        try:
            claimed = json.loads(result["output"])
            if job["kind"] == TRAINING:
                spec = TrainingSpec.of(job)
                tokens = int(claimed["epochs"][0]["samples"]) * spec.seq_len
                return core.training_flops(params, tokens, spec.epochs)
            prompt, generated = int(claimed["prompt_tokens"]), len(claimed["token_ids"])
            cached = any(i["name"] == PAST_KEYS for i in manifest["inputs"])
            return core.generation_flops(params, prompt, generated, cached)
        except (ValueError, KeyError, TypeError, IndexError):
            return 0

    def retrain(
        self, job: dict[str, Any], result: dict[str, Any], manifest: dict[str, Any]
    ) -> tuple[core.Check, int]:
        """Re-run one seeded epoch from the node's previous checkpoint and compare."""
        spec = TrainingSpec.of(job)
        unreadable = core.Check("epoch re-run", False, "not a training result for this job"), 0
        try:
            epochs = json.loads(result["output"])["epochs"]
            losses = np.frombuffer(result["fingerprint"], dtype="<f4")
        except (ValueError, KeyError, TypeError):
            return unreadable
        if not len(epochs) == spec.epochs == len(losses):
            return unreadable
        number = int.from_bytes(keccak(job["job_id"] + result["node"] + b"epoch")[:4]) % len(epochs)
        cid = job["params"]["manifest_cid"]
        try:
            previous = (
                self.models.source.file(epochs[number - 1]["checkpoint_cid"]) if number else None
            )
            claimed = weights_array(self.models.source.file(epochs[number]["checkpoint_cid"]))
            dataset = self.models.source.file(job["dataset_cid"] or "")
        except (FetchError, ContentError, ValueError) as exc:
            return core.Check("epoch re-run", False, f"checkpoint or dataset unavailable: {exc}"), 0
        _, source = self.models.unpacked(cid, "source")
        trainer = Trainer(source, self.models.tokenizer(cid), dataset, spec, threads=1)
        again = trainer.rerun(number, previous)
        check = core.check_training_epoch(
            number, claimed, weights_array(again.checkpoint), float(losses[number]), again.loss
        )
        tokens = again.samples * spec.seq_len
        return check, core.training_flops(manifest["parameter_count"], tokens, spec.epochs)

    def reexecute(self, job: dict[str, Any], result: dict[str, Any]) -> tuple[core.Check, int]:
        model, _ = self.models.load(job["params"]["manifest_cid"])
        if model.manifest.task != TEXT_GENERATION:
            recomputed = model.run_tensors(job["input"] or b"")
            check = core.check_tensors(
                result["output"], recomputed, result["fingerprint"], job["job_id"]
            )
            return check, 0
        prompt = model.prompt_ids(json.loads(job["input"] or b"{}"))
        try:
            tokens = [int(t) for t in json.loads(result["output"])["token_ids"]]
        except (ValueError, KeyError, TypeError):
            return core.Check("re-execution", False, "output is not a generation document"), 0
        vocabulary = int(model.session.get_outputs()[0].shape[-1] or 0) or None
        if vocabulary is not None and any(not 0 <= t < vocabulary for t in tokens):
            return core.Check("re-execution", False, "tokens out of the vocabulary"), 0
        logits = model.logits(prompt + tokens) if tokens else model.logits(prompt)
        check = core.check_generation(
            result["output"],
            result["fingerprint"],
            np.asarray(logits),
            len(prompt),
            model.eos_token_id,
        )
        params = model.manifest.document["parameter_count"]
        cached = model.kv_cache is not None
        return check, core.generation_flops(params, len(prompt), len(tokens), cached)

    def judge(self, facts: JobFacts, result: dict[str, Any], position: dict[str, Any]) -> None:
        """Verdict, then money. A verdict on the log whose money is not (a crash between
        the two) is paid now from that verdict, not judged again."""
        verdict = facts.verdicts.get(result["node"])
        if verdict is None:
            verdict = self.verdict(facts, result, position)
        elif verdict["cause"] != position:
            return  # a duplicate result: judged (and settled) once
        self.pay(facts, result, verdict)

    def verdict(
        self, facts: JobFacts, result: dict[str, Any], position: dict[str, Any]
    ) -> dict[str, Any]:
        job = facts.record
        assert job is not None
        checks = self.checks(facts, result)
        outcome = core.outcome(checks)
        VERIFICATIONS.labels(outcome).inc()
        assignment = facts.assignments[result["attempt"]]
        reputation = next(
            (c["reputation_bps"] for c in assignment["candidates"] if c["node"] == result["node"]),
            5_000,
        )
        performance = core.performance_bps(job, result) if outcome == core.ACCEPTED else 0
        verdict = {
            "job_id": job["job_id"],
            "node": result["node"],
            "verifier": self.address,
            "outcome": outcome,
            "checks": [c.record() for c in checks],
            "performance_bps": performance,
            "reputation_bps": reputation,
            "seed": keccak(job["job_id"] + result["node"] + b"spot"),
            "cause": position,
        }
        self.producer.send(self.outputs["verdicts"], verdict, key=hex_key(job["job_id"])).result(30)
        facts.verdicts[result["node"]] = verdict
        log.info(
            "job 0x%s node 0x%s: %s", job["job_id"].hex()[:12], result["node"].hex()[:8], outcome
        )
        return verdict

    def pay(self, facts: JobFacts, result: dict[str, Any], verdict: dict[str, Any]) -> None:
        """What a verdict means in money: the node paid, slashed, or the requester refunded."""
        job = facts.record
        assert job is not None
        node = result["node"]
        if node in facts.settled_for:
            return
        registration = self.registrations[node]
        cause = verdict["cause"]
        if verdict["outcome"] == core.ACCEPTED:
            price = registration["price_wei_per_hour"]
            budget = job["max_price_wei"] - facts.charged
            if budget <= 0:
                return  # the job's budget went to an earlier result
            owed = reward(
                price,
                result["timings"]["compute_ms"],
                budget,
                verdict["performance_bps"],
                verdict["reputation_bps"],
            )
            self.settle(facts, node, owed, 0, cause)
        elif verdict["outcome"] == core.REJECTED:
            # A result the node did not sign proves nothing against it: anyone can write one.
            # The figure is fixed: the stake a registration declares is the node's own word.
            signed = all(c["passed"] for c in verdict["checks"] if c["name"] == "signature")
            slash = self.settings.slash_wei if signed else 0
            self.settle(facts, node, Reward(0, 0, 0), slash, cause)
        elif not facts.charged and ZERO not in facts.settled_for:
            self.settle(facts, ZERO, refund(job["max_price_wei"]), 0, cause)

    # -- money ----------------------------------------------------------------------------

    def settle(
        self, facts: JobFacts, provider: bytes, owed: Reward, slash: int, cause: dict[str, Any]
    ) -> None:
        job = facts.record
        assert job is not None
        try:
            signer = job_signer(job, self.settings.chain_id)
        except InvalidSignature:
            return  # never assigned: the matcher dropped it too
        refund_wei = job["max_price_wei"] - facts.charged - owed.charged_wei
        call = Settlement(
            settlement_id(job["job_id"], provider),
            signer,
            job["requester"],
            provider,
            owed.paid_wei,
            owed.fee_wei,
            max(refund_wei, 0),
            slash,
        )
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
                job["job_id"].hex()[:12],
                tx_hash.hex(),
            )
        else:
            raw = signed_call(
                self.key,
                self.settings.chain_id,
                self.nonce,
                JOB_MARKET,
                settle_call(*dataclasses.astuple(call)),
                gas=200_000,
            )
            tx = decode_transaction(raw, self.rules)
            self.producer.send(
                self.outputs["tx"],
                submitted_event(tx, job["submitted_at_ms"], "verifier"),
                key=hex_key(tx.sender),
            ).result(30)
            self.nonce += 1
            tx_hash = tx.hash
            self.sent[call.settlement_id] = (tx_hash, call)
        settled = {
            "job_id": job["job_id"],
            "provider": provider,
            "requester": job["requester"],
            "transaction_hash": tx_hash,
            "paid_wei": call.paid,
            "fee_wei": call.fee,
            "refund_wei": call.refund,
            "slashed_wei": call.slash,
            "cause": cause,
        }
        self.producer.send(self.outputs["settled"], settled, key=hex_key(job["job_id"])).result(30)
        facts.settled_for.add(provider)
        facts.charged += call.paid + call.fee

    def recall_sent(self) -> None:
        """Every transaction this settler has on the log: its next nonce, and the
        settlements already sent (see `sent`)."""
        reader = Reader(self.bootstrap, client_id=f"{self.settings.client_id}-verifier-sent")
        mine = hex_key(self.address)
        topic_name = self.outputs["tx"].name
        try:
            # Keyed by sender: one partition holds every transaction of the settler's.
            partition = partition_of(mine, len(reader.partitions(topic_name)))
            for message in reader.read({(topic_name, partition): 0}):
                if message.key() != mine.encode():
                    continue
                record = reader.decode(message).value
                if record["sender"] != self.address:
                    continue
                self.nonce = max(self.nonce, record["nonce"] + 1)
                tx = decode_transaction(record["raw"], self.rules)
                call = settlement_of(tx.data) if tx.to == JOB_MARKET else None
                if call is not None:
                    self.sent.setdefault(call.settlement_id, (tx.hash, call))
        finally:
            reader.close()

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event, idle_exit_s: float | None = None) -> None:
        """Verify until `stop`; with `idle_exit_s`, also return once caught up and idle
        that long (a replay)."""
        reader = Reader(
            self.bootstrap,
            client_id=f"{self.settings.client_id}-verifier",
            config=LOW_LATENCY_READ,
        )
        self.recall_sent()
        positions = {(s.name, p): 0 for s in self.inputs for p in reader.partitions(s.name)}
        catch_up = CatchUp(reader, positions)
        reader.assign(positions)
        own = {self.outputs["verdicts"].name, self.outputs["settled"].name}
        idle_since = time.monotonic()
        try:
            if catch_up.done:
                self.go_live()
            while not stop.is_set():
                message = reader.poll_raw(0.05)
                if message is None:
                    quiet = time.monotonic() - idle_since
                    if idle_exit_s is not None and self.live and quiet > idle_exit_s:
                        return
                    continue
                idle_since = time.monotonic()
                # Live, our own outputs were applied when we sent them.
                if message.error() is None and not (self.live and message.topic() in own):
                    record = reader.decode(message)
                    self.apply(record.schema, record.value, record.position)
                if not self.live and catch_up.saw(message):
                    self.go_live()
        finally:
            reader.close()
            self.producer.close()
