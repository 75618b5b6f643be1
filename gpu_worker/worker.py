"""`lattice worker`: a compute node's process.

Start-up: probe the hardware, stake and register on the ledger (`JobMarket.registerNode`,
sent through the gateway's JSON-RPC), announce the node on `lattice.gpu.nodes` (signed), then
heartbeat on `lattice.gpu.heartbeats` every couple of seconds with live utilisation.

The loop: the node's consumer group (`lattice-worker-<address>`) reads `lattice.jobs.assigned`;
an assignment naming this node (and not yet past its lease) is run — models are fetched by
CID, verified and loaded once — and answered on `lattice.jobs.results` with a signed result
carrying the output inline, its CID and digest, a tolerance-aware fingerprint, timings and a
hardware snapshot. The group offset is committed only after the result is acknowledged, so a
crash re-runs the job (the verifier pays a job once); a node that dies holding a job loses
it to another node when its lease expires.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Consumer
from eth_hash.auto import keccak

from gateway.client import RpcFailure, rpc_call, send_call, wait_for_ledger
from gpu_worker.models import TEXT_GENERATION
from gpu_worker.probe import Hardware, probe, usage
from gpu_worker.runtime import BlockSource, LoadedModel, ModelCache
from gpu_worker.training import Trainer, TrainingSpec, output_document
from processors.execution.genesis import JOB_MARKET, address_of
from processors.market.chain import (
    price_call,
    register_node_call,
    request_unstake_call,
    stakes_call,
    unbonding_until_call,
    withdraw_stake_call,
)
from processors.market.content import Blockstore, cid_of
from processors.market.jobs import TRAINING, node_record_hash, result_hash, sign
from processors.verifier.core import (
    GENERATION_SCHEME,
    TENSOR_SCHEME,
    TRAINING_SCHEME,
    generation_fingerprint,
    tensor_fingerprint,
)
from streams.kafka import LOW_LATENCY_READ, Producer, client_config
from streams.metrics import STATS_INTERVAL_MS, record_statistics
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
VERSION = "0.1.0"


def execute(
    model: LoadedModel,
    job: dict[str, Any],
    on_text: Callable[[int, int, str], None] | None = None,
) -> tuple[bytes, str, bytes]:
    """Run one inference job: (output bytes, fingerprint scheme, fingerprint)."""
    data = job["input"] or b""
    if model.manifest.task == TEXT_GENERATION:
        generation = model.generate(json.loads(data), on_text)
        return (
            generation.output(),
            GENERATION_SCHEME,
            generation_fingerprint(generation.chosen_logits),
        )
    output = model.run_tensors(data)
    return output, TENSOR_SCHEME, tensor_fingerprint(output, job["job_id"])


#: The longest a streamed token waits for others to share its event (the first goes at once).
STREAM_EVERY_S = 0.02


@dataclass
class TokenBatch:
    """Streamed tokens gathered into `lattice.jobs.tokens` events: one event per token made
    a fast model's stream a record per millisecond; now at most one per `STREAM_EVERY_S`."""

    job_id: bytes
    node: bytes
    attempt: int
    first: int = 0
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    sent_at: float | None = None

    def add(self, index: int, token: int, text: str, now: float) -> list[dict[str, Any]]:
        """The events due after this token (none while it waits for company)."""
        if not self.token_ids:
            self.first = index
        self.token_ids.append(token)
        self.text += text
        if self.sent_at is not None and now - self.sent_at < STREAM_EVERY_S:
            return []
        self.sent_at = now
        return self.rest()

    def rest(self) -> list[dict[str, Any]]:
        """The event holding whatever is gathered (none when nothing is)."""
        if not self.token_ids:
            return []
        record = {
            "job_id": self.job_id,
            "node": self.node,
            "attempt": self.attempt,
            "index": self.first,
            "token_ids": self.token_ids,
            "text": self.text,
        }
        self.token_ids, self.text = [], ""
        return [record]


def market_uint(rpc: str, data: bytes) -> int:
    """A uint256 read from `JobMarket` at the latest block."""
    call = {"to": "0x" + JOB_MARKET.hex(), "data": "0x" + data.hex()}
    return int(rpc_call(rpc, "eth_call", [call, "latest"]), 16)


def leave(rpc: str, chain_id: int, key: bytes) -> tuple[int, int]:
    """Take a node out of the market: `requestUnstake` on the ledger, after which the
    matcher (which reads stakes from the ledger's receipts) offers it nothing. Returns the
    stake and when it becomes withdrawable (unix seconds). Refuses (nothing sent) when the
    node has nothing staked. A worker started again rejoins: its `registerNode` cancels it."""
    node = address_of(key)
    wait_for_ledger(rpc)
    stake = market_uint(rpc, stakes_call(node))
    if stake == 0:
        raise RpcFailure(f"node 0x{node.hex()} has nothing staked")
    send_call(rpc, chain_id, key, JOB_MARKET, request_unstake_call(), gas=100_000)
    return stake, market_uint(rpc, unbonding_until_call(node))


def node_status(rpc: str, node: bytes) -> dict[str, Any]:
    """What the ledger and the market say of a node: stake, price, leaving, and the
    market's view of it (`/v1/nodes`: reputation, verdicts, last seen) when listed."""
    wait_for_ledger(rpc)
    until = market_uint(rpc, unbonding_until_call(node))
    status: dict[str, Any] = {
        "node": "0x" + node.hex(),
        "stake_wei": market_uint(rpc, stakes_call(node)),
        "price_wei_per_hour": market_uint(rpc, price_call(node)),
        "withdrawable_at": until or None,
    }
    try:
        with urllib.request.urlopen(rpc.rstrip("/") + "/v1/nodes", timeout=30) as response:
            listed = json.loads(response.read())["nodes"]
    except (OSError, ValueError) as exc:
        raise RpcFailure(f"GET /v1/nodes at {rpc}: {exc}") from None
    status["market"] = next((n for n in listed if n["address"] == status["node"]), None)
    return status


def withdraw_stake(rpc: str, chain_id: int, key: bytes) -> int:
    """Take a leaving node's stake back once its unbonding period is over; the amount.
    Refuses (nothing sent) while the node is not leaving or the period is still running."""
    node = address_of(key)
    wait_for_ledger(rpc)
    until = market_uint(rpc, unbonding_until_call(node))
    if until == 0:
        raise RpcFailure(f"node 0x{node.hex()} is not leaving: run `lattice worker unstake` first")
    now = int(rpc_call(rpc, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
    if now < until:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until))
        raise RpcFailure(f"still unbonding: the stake is withdrawable in {until - now} s ({when})")
    stake = market_uint(rpc, stakes_call(node))
    send_call(rpc, chain_id, key, JOB_MARKET, withdraw_stake_call(), gas=100_000)
    return stake


class Worker:
    def __init__(
        self, settings: Settings, bootstrap: str, private_key: bytes, rpc_url: str | None
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.key = private_key
        self.address = address_of(private_key)
        self.rpc_url = rpc_url
        self.hardware: Hardware = probe()
        self.producer = Producer(bootstrap, client_id=f"{settings.client_id}-worker")
        work = settings.data_dir / "workers" / self.address.hex()
        peers = [rpc_url.rstrip("/")] if rpc_url else []
        self.models = ModelCache(
            BlockSource(Blockstore(work / "blockstore"), peers),
            work,
            threads=settings.worker_threads,
            use_gpu=bool(self.hardware.devices),
        )
        self.in_flight = 0
        self.attempt = 0  # of the job being run
        self.sequence = int(time.time() * 1000)  # strictly increasing across restarts

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

    def registration(self) -> dict[str, Any]:
        hw = self.hardware
        self.sequence += 1
        record = {
            "node": self.address,
            "price_wei_per_hour": self.settings.worker_price,
            "stake_wei": self.settings.worker_stake,
            "devices": [d.__dict__ for d in hw.devices],
            "driver_version": hw.driver_version,
            "cuda_version": hw.cuda_version,
            "cpu_model": hw.cpu_model,
            "cpu_cores": hw.cpu_cores,
            "ram_bytes": hw.ram_bytes,
            "runtimes": list(hw.runtimes),
            "worker_version": VERSION,
            "sequence": self.sequence,
            "registered_at_ms": int(time.time() * 1000),
            "signature": b"",
        }
        record["signature"] = sign(
            self.key, node_record_hash("node-registration", record, self.settings.chain_id)
        )
        return record

    def heartbeat(self) -> dict[str, Any]:
        self.sequence += 1
        record = {
            "node": self.address,
            "sequence": self.sequence,
            "timestamp_ms": int(time.time() * 1000),
            "devices": usage(),
            "jobs_in_flight": self.in_flight,
            "signature": b"",
        }
        record["signature"] = sign(
            self.key, node_record_hash("node-heartbeat", record, self.settings.chain_id)
        )
        return record

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

    def result_for(self, assignment: dict[str, Any], received_ms: int) -> dict[str, Any]:
        job = assignment["job"]
        self.attempt = assignment["attempt"]
        manifest_cid = job["params"].get("manifest_cid", "")
        if job["kind"] == TRAINING:
            provider = "torch-cpu"
            started = time.perf_counter()
            output, scheme, fingerprint = self.train(job)
            load_ms = 0
            threads = self.settings.worker_threads
        else:
            model, load_ms = self.models.load(manifest_cid)
            provider, threads = model.provider, model.threads
            started = time.perf_counter()
            output, scheme, fingerprint = self.execute(model, job)
        compute_ms = int((time.perf_counter() - started) * 1000)
        record = {
            "job_id": job["job_id"],
            "node": self.address,
            "attempt": assignment["attempt"],
            "output_cid": cid_of(output),
            "output_digest": hashlib.sha256(output).digest(),
            "output_size": len(output),
            "fingerprint_scheme": scheme,
            "fingerprint": fingerprint,
            "timings": {
                "queue_ms": max(0, received_ms - job["submitted_at_ms"]),
                "load_ms": load_ms,
                "compute_ms": compute_ms,
            },
            "hardware": {
                "device_name": self.hardware.device_name,
                "vram_bytes": self.hardware.memory_bytes,
                "driver_version": self.hardware.driver_version,
                "execution_provider": provider,
                "threads": threads,
            },
            "completed_at_ms": int(time.time() * 1000),
            "signature": b"",
            "cause": None,
            "output": output,
        }
        record["signature"] = self.sign_result(record)
        return record

    def execute(self, model: LoadedModel, job: dict[str, Any]) -> tuple[bytes, str, bytes]:
        if job["params"].get("stream") != "1":
            return execute(model, job)

        batch = TokenBatch(job["job_id"], self.address, self.attempt)

        def stream(index: int, token: int, text: str) -> None:
            # Not awaited: progress only; the signed result that follows is what counts.
            for record in batch.add(index, token, text, time.monotonic()):
                self.producer.send(TOKENS, record, key=hex_key(job["job_id"]))

        try:
            return execute(model, job, stream)
        finally:
            for record in batch.rest():
                self.producer.send(TOKENS, record, key=hex_key(job["job_id"]))

    def train(self, job: dict[str, Any]) -> tuple[bytes, str, bytes]:
        """Run a training job; every epoch's checkpoint is published by CID as it ends."""
        manifest_cid = job["params"]["manifest_cid"]
        _, source = self.models.unpacked(manifest_cid, "source")
        dataset = self.models.source.file(job["dataset_cid"] or "")
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
            log.info(
                "job 0x%s epoch %d: loss %.4f", job["job_id"].hex()[:12], epoch.epoch, epoch.loss
            )
        losses = np.asarray([e["loss"] for e in epochs], dtype="<f4").tobytes()
        return output_document(epochs), TRAINING_SCHEME, losses

    def proof(self, result: dict[str, Any]) -> dict[str, Any]:
        """The training trace behind a training result (lattice.jobs.proofs)."""
        epochs = json.loads(result["output"])["epochs"]
        commitment = keccak(result["output"])
        return {
            "job_id": result["job_id"],
            "node": self.address,
            "attempt": result["attempt"],
            "kind": "TRAINING_TRACE",
            "commitment": commitment,
            "epochs": [
                {
                    "epoch": e["epoch"],
                    "checkpoint_cid": e["checkpoint_cid"],
                    "loss_ppm": int(e["loss"] * 1_000_000),
                    "samples": e["samples"],
                }
                for e in epochs
            ],
            "signature": sign(
                self.key, keccak(b"lattice-proof-v1" + result["job_id"] + commitment)
            ),
            "cause": result["cause"],
        }

    def sign_result(self, record: dict[str, Any]) -> bytes:
        return sign(self.key, result_hash(record, self.settings.chain_id))

    def handle(self, assignment: dict[str, Any], position: dict[str, Any]) -> None:
        if self.address not in assignment["nodes"] or assignment["job"] is None:
            return
        now = int(time.time() * 1000)
        if now > assignment["lease_expires_ms"]:
            log.info("skipping job 0x%s: its lease expired", assignment["job_id"].hex())
            return
        self.in_flight += 1
        try:
            result = self.result_for(assignment, now)
        except Exception:
            log.exception("job 0x%s failed", assignment["job_id"].hex())
            return  # not answered: the lease expires and the matcher reassigns it
        finally:
            self.in_flight -= 1
        result["cause"] = position
        self.producer.send(RESULTS, result, key=hex_key(result["job_id"])).result(30)
        if result["fingerprint_scheme"] == TRAINING_SCHEME:
            self.producer.send(PROOFS, self.proof(result), key=hex_key(result["job_id"])).result(30)

    def run(self, stop: threading.Event, ready_timeout_s: float = 60.0) -> None:
        """Join the group, and only once it has partitions announce the node (an assignment
        made before the node can read it would wait for its lease), then serve."""
        assigned = threading.Event()
        consumer = Consumer(
            client_config(
                self.bootstrap,
                {
                    "group.id": f"lattice-worker-{self.address.hex()}",
                    "client.id": f"{self.settings.client_id}-worker",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "latest",
                    "session.timeout.ms": 10_000,
                    **LOW_LATENCY_READ,
                    "stats_cb": record_statistics,
                    "statistics.interval.ms": STATS_INTERVAL_MS,
                },
                self.settings.kafka_config,
            )
        )
        consumer.subscribe([ASSIGNED.name], on_assign=lambda c, parts: assigned.set())
        codec = self.producer.codec
        try:
            deadline = time.monotonic() + ready_timeout_s
            early = []  # what the poll that brought the partitions also brought
            while not assigned.is_set() and not stop.is_set():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no partitions of {ASSIGNED.name} after {ready_timeout_s}s")
                early.append(consumer.poll(0.1))
            if stop.is_set():
                return
            self.announce()
            threading.Thread(target=self._beat, args=(stop,), name="heartbeat", daemon=True).start()
            while not stop.is_set():
                message = early.pop(0) if early else consumer.poll(0.1)
                if message is None or message.error() is not None:
                    continue
                assignment = codec.decode(message.value() or b"", expect=ASSIGNED.schema).record
                position = {
                    "topic": message.topic(),
                    "partition": message.partition(),
                    "offset": message.offset(),
                }
                self.handle(assignment, position)
                consumer.commit(message=message, asynchronous=False)
        finally:
            consumer.close()
            self.producer.close()

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_EVERY_S):
            try:
                self.producer.send(HEARTBEATS, self.heartbeat(), key=hex_key(self.address))
            except Exception:  # a missed heartbeat is not fatal; the next one may land
                log.exception("heartbeat failed")
