"""The market's HTTP face: REST `/v1/jobs`, `/v1/nodes`, `/v1/models`, content blocks, and
the OpenAI-compatible `/v1/completions` and `/v1/chat/completions`.

`MarketService` follows the market's topics from the beginning (the same `MarketView` fold
the matcher uses, plus each job's lifecycle) and wakes requests waiting for a job's result.

API keys: `lk_<64 hex>` is a secp256k1 private key the caller holds; its address must be an
authorised delegate of an account in `JobMarket` (`lattice keys create`). The gateway signs
each job with it — the ledger checks the delegation again when settling — and admits a job
only while the account's deposit covers the maximum prices of its jobs still in flight.

Completions return when the worker's signed result is on the log (verification and payment
follow asynchronously). With `stream: true` the job asks its node for its tokens as it
generates them (`lattice.jobs.tokens`); they are sent as server-sent events as they arrive,
and the stream ends with the signed result's finish reason.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from eth_abi.abi import decode
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gateway.chainview import LedgerNotReady
from gateway.rpc import Rpc, RpcError
from gpu_worker.models import load_manifest, manifest_record, store_part
from processors.execution.genesis import JOB_MARKET, MODEL_REGISTRY, address_of
from processors.market.chain import MODEL_REGISTERED, call_data, decode_model_registered
from processors.market.content import Blockstore, ContentError, cid_of, digest_of
from processors.market.jobs import INFERENCE, TRAINING, JobRequest
from processors.market.view import MarketView
from schemas.codec import CodecError, default_codec, jsonable
from streams.abc import RecordSink
from streams.kafka import LOW_LATENCY_READ, Reader
from streams.metrics import EVENTS, JOB_QUEUE
from streams.settings import Settings
from streams.topics import hex_key, topic

log = logging.getLogger(__name__)

SUBMITTED = topic("jobs.submitted")
MODELS = topic("models")
FOLLOWED = (
    topic("gpu.nodes"),
    topic("gpu.heartbeats"),
    MODELS,
    SUBMITTED,
    topic("jobs.assigned"),
    topic("jobs.results"),
    topic("jobs.verdicts"),
    topic("jobs.settled"),
    topic("jobs.tokens"),
    topic("receipts"),  # nodes' stakes, from JobMarket's events
)
INLINE_LIMIT = 64 * 1024
KEY_PREFIX = "lk_"


class MarketError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def new_api_key(private_key: bytes) -> str:
    return KEY_PREFIX + private_key.hex()


def key_of(api_key: str) -> bytes:
    raw = api_key.removeprefix(KEY_PREFIX)
    if not api_key.startswith(KEY_PREFIX) or len(raw) != 64:
        raise MarketError(
            401, "invalid_api_key", "API keys look like lk_ followed by 64 hex digits"
        )
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise MarketError(
            401, "invalid_api_key", "API keys look like lk_ followed by 64 hex digits"
        ) from None


@dataclass
class JobStatus:
    record: dict[str, Any]
    assignments: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    settlements: list[dict[str, Any]] = field(default_factory=list)
    tokens: list[dict[str, Any]] = field(default_factory=list)  # streamed progress

    @property
    def state(self) -> str:
        if self.settlements:
            return "settled"
        if self.verdicts:
            return "verified"
        if self.results:
            return "completed"
        if self.assignments and not self.assignments[-1]["nodes"]:
            return "expired"
        return "assigned" if self.assignments else "submitted"


#: Where each job record goes in its job's status.
_PART_OF_A_JOB = {
    "lattice.jobs.JobAssigned": "assignments",
    "lattice.jobs.JobResult": "results",
    "lattice.jobs.JobVerdict": "verdicts",
    "lattice.jobs.JobSettled": "settlements",
    "lattice.jobs.JobTokens": "tokens",
}
#: Jobs whose records came before their submission, kept at most (the oldest dropped).
MAX_EARLY_JOBS = 10_000


def _attach(status: JobStatus, schema: str, record: dict[str, Any]) -> None:
    getattr(status, _PART_OF_A_JOB[schema]).append(record)


@dataclass
class Hold:
    """What a job may still cost its requester's deposit: its maximum price, held from its
    submission until a settlement of it has executed (the deposit then shows the charge),
    or until `expires_ms` should the verifier never settle it."""

    account: bytes
    price_wei: int
    expires_ms: int


def _remember(seen: OrderedDict[bytes, None], key: bytes) -> None:
    seen[key] = None
    if len(seen) > MAX_EARLY_SETTLEMENTS:
        seen.popitem(last=False)


#: How long after its deadline an unsettled job stops holding its deposit.
HOLD_GRACE_MS = 120_000
#: Settlement transactions seen executed before their `jobs.settled` record, kept at most.
MAX_EARLY_SETTLEMENTS = 10_000


class MarketService:
    def __init__(self, settings: Settings, bootstrap: str, chain_id: int) -> None:
        self.settings = settings
        self.view = MarketView(chain_id)
        self.jobs: dict[bytes, JobStatus] = {}
        #: Deposit holds by job, from the log (so every gateway holds the same) and from
        #: this gateway's own admissions until the log brings them back.
        self.holds: dict[bytes, Hold] = {}
        self._settling: dict[bytes, bytes] = {}  # settlement tx hash -> job id
        self._executed: OrderedDict[bytes, None] = OrderedDict()  # JobMarket tx hashes
        self._released: OrderedDict[bytes, None] = OrderedDict()  # jobs settled on the ledger
        #: Records of jobs whose submission has not come in yet, by job, oldest first.
        self._early: OrderedDict[bytes, list[tuple[str, dict[str, Any]]]] = OrderedDict()
        self.lock = threading.Lock()
        self.waiters: dict[bytes, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self.blockstore = Blockstore(Path(settings.data_dir) / "blockstore")
        self._bootstrap = bootstrap
        self._stop = threading.Event()
        self._nonce = itertools.count(int(time.time() * 1000) * 1000)
        self._thread = threading.Thread(target=self._follow, name="market", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _follow(self) -> None:
        codec = default_codec()
        reader = Reader(
            self._bootstrap, client_id="lattice-gateway-market", config=LOW_LATENCY_READ
        )
        try:
            reader.assign({(t.name, p): 0 for t in FOLLOWED for p in reader.partitions(t.name)})
            while not self._stop.is_set():
                message = reader.poll_raw(0.1)
                if message is None or message.error() is not None:
                    continue
                try:
                    decoded = codec.decode(message.value())
                except CodecError as exc:
                    log.warning("%s: skipping an undecodable record: %s", message.topic(), exc)
                    continue
                self.apply(decoded.name, decoded.record)
                EVENTS.labels("gateway", message.topic(), "in").inc()
        except Exception:
            log.exception("stopped following the market")
        finally:
            reader.close()

    def in_flight(self, account: bytes, now_ms: int) -> int:
        """The deposit `account`'s unsettled jobs hold (expired holds are dropped)."""
        with self.lock:
            for job_id in [j for j, h in self.holds.items() if h.expires_ms <= now_ms]:
                del self.holds[job_id]
            return sum(h.price_wei for h in self.holds.values() if h.account == account)

    def hold(self, job_id: bytes, hold: Hold) -> None:
        with self.lock:
            self.holds[job_id] = hold

    def unhold(self, job_id: bytes) -> None:
        with self.lock:
            self.holds.pop(job_id, None)

    def _fold_holds(self, schema: str, record: dict[str, Any]) -> None:
        # The topics are read side by side: a settlement (or its receipt) can come in
        # before the job's submission, or its receipt before its record.
        if schema == "lattice.jobs.JobSubmitted":
            job_id = record["job_id"]
            if job_id not in self.jobs and job_id not in self._released:
                expires = record["deadline_ms"] + HOLD_GRACE_MS
                self.holds[job_id] = Hold(record["requester"], record["max_price_wei"], expires)
        elif schema == "lattice.jobs.JobSettled":
            tx = record["transaction_hash"]
            if tx in self._executed:
                self._release(record["job_id"])
            else:
                self._settling[tx] = record["job_id"]
        elif schema == "lattice.receipts.Receipt" and record["to_address"] == JOB_MARKET:
            job_id = self._settling.pop(record["transaction_hash"], None)
            if job_id is not None:
                self._release(job_id)
            else:
                _remember(self._executed, record["transaction_hash"])

    def _release(self, job_id: bytes) -> None:
        self.holds.pop(job_id, None)
        _remember(self._released, job_id)

    def apply(self, schema: str, record: dict[str, Any]) -> None:
        with self.lock:
            self.view.apply(schema, record)
            self._fold_holds(schema, record)
            job_id = record.get("job_id", b"")
            if schema == "lattice.jobs.JobSubmitted":
                status = self.jobs.setdefault(job_id, JobStatus(record))
                early = self._early.pop(job_id, [])
                for kind, item in early:
                    _attach(status, kind, item)
                if not early:
                    return
            elif schema in _PART_OF_A_JOB:
                known = self.jobs.get(job_id)
                if known is None:
                    # The job topics are read side by side in no set order: an assignment
                    # can come in before its submission. Keep it for when that arrives.
                    self._early.setdefault(job_id, []).append((schema, record))
                    if len(self._early) > MAX_EARLY_JOBS:
                        self._early.popitem(last=False)
                    return
                _attach(known, schema, record)
            else:
                return
            wake = self.waiters.pop(job_id, [])
        for loop, future in wake:
            loop.call_soon_threadsafe(_resolve, future)

    async def wait(
        self, job_id: bytes, done: Callable[[JobStatus], bool], timeout: float
    ) -> JobStatus | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self.lock:
                status = self.jobs.get(job_id)
                if status is not None and done(status):
                    return status
                future: asyncio.Future[None] = loop.create_future()
                self.waiters.setdefault(job_id, []).append((loop, future))
            remaining = deadline - loop.time()
            if remaining <= 0:
                return status
            try:
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                return self.jobs.get(job_id)

    def observe(self) -> None:
        """Job counts by state, for /metrics."""
        with self.lock:
            states = [status.state for status in self.jobs.values()]
        for state in ("submitted", "assigned", "completed", "verified", "settled", "expired"):
            JOB_QUEUE.labels(state).set(states.count(state))

    def next_nonce(self) -> int:
        return next(self._nonce)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _call(rpc: Rpc, to: bytes, data: bytes) -> bytes:
    answer = rpc.rpc_eth_call([{"to": "0x" + to.hex(), "data": "0x" + data.hex()}, "latest"])
    return bytes.fromhex(answer[2:])


def account_of(rpc: Rpc, delegate: bytes) -> bytes:
    raw = _call(rpc, JOB_MARKET, call_data("delegateOf(address)", "0x" + delegate.hex()))
    return bytes.fromhex(str(decode(["address"], raw)[0])[2:])


def deposit_of(rpc: Rpc, account: bytes) -> int:
    raw = _call(rpc, JOB_MARKET, call_data("deposits(address)", "0x" + account.hex()))
    return int(decode(["uint256"], raw)[0])


def _error(exc: MarketError) -> JSONResponse:
    body = {"error": {"code": exc.code, "message": exc.message, "type": exc.code}}
    return JSONResponse(body, status_code=exc.status)


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def job_json(status: JobStatus) -> dict[str, Any]:
    record = status.record
    result = status.results[0] if status.results else None
    output: Any = None
    if result is not None and result["output"] is not None:
        try:
            output = json.loads(result["output"])
        except ValueError:
            output = {"bytes": len(result["output"])}
    return {
        "id": _hex(record["job_id"]),
        "state": status.state,
        "kind": record["kind"].lower(),
        "model": record["model_id"],
        "requester": _hex(record["requester"]),
        "max_price_wei": str(record["max_price_wei"]),
        "deadline_ms": record["deadline_ms"],
        "assignments": [jsonable(a | {"job": None}) for a in status.assignments],
        "result": jsonable(result | {"output": None}) if result else None,
        "result_count": len(status.results),
        "streamed_tokens": sum(len(t["token_ids"]) for t in status.tokens),
        "output": output,
        "verdicts": [jsonable(v) for v in status.verdicts],
        "settlements": [jsonable(s) for s in status.settlements],
    }


def router(settings: Settings, market: MarketService, rpc: Rpc, sink: RecordSink) -> APIRouter:
    api = APIRouter()

    def authorise(request: Request) -> tuple[bytes, bytes]:
        """(delegate key, account) for the request's bearer API key."""
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise MarketError(401, "missing_api_key", "send Authorization: Bearer lk_...")
        key = key_of(header[7:].strip())
        try:
            account = account_of(rpc, address_of(key))
        except (RpcError, LedgerNotReady) as exc:
            raise MarketError(503, "unavailable", f"cannot read JobMarket: {exc}") from None
        if account == bytes(20):
            raise MarketError(
                401, "invalid_api_key", "this API key is not authorised by any account"
            )
        return key, account

    async def start(
        request: Request,
        model_name: str,
        payload: dict[str, Any],
        max_price: int | None,
        timeout_ms: int | None = None,
        training: dict[str, Any] | None = None,
        redundant: bool = False,
        stream: bool = False,
    ) -> dict[str, Any]:
        """Admit, sign and log a job; its record. It holds its maximum price on the deposit
        until a settlement of it has executed (`MarketService.holds`). `training`
        ({"dataset", "epochs", "batch_size"} plus string params) makes it a training job;
        `stream` asks the node for its tokens as they come."""
        key, account = authorise(request)
        with market.lock:
            manifest = market.view.models.get(model_name)
        if manifest is None:
            raise MarketError(
                404, "model_not_found", f"no model named {model_name!r} is registered"
            )
        price = max_price or settings.job_max_price
        in_flight = market.in_flight(account, int(time.time() * 1000))
        try:
            deposit = deposit_of(rpc, account)
        except (RpcError, LedgerNotReady) as exc:
            raise MarketError(503, "unavailable", f"cannot read the deposit: {exc}") from None
        if deposit - in_flight < price:
            raise MarketError(
                402,
                "insufficient_deposit",
                f"deposit {deposit} wei, {in_flight} reserved by jobs in flight; "
                f"this job may cost {price}",
            )
        data = json.dumps(payload, sort_keys=True).encode()
        if len(data) > INLINE_LIMIT:
            raise MarketError(413, "input_too_large", f"inputs are limited to {INLINE_LIMIT} bytes")
        market.blockstore.put(data)
        now = int(time.time() * 1000)
        params = {"manifest_cid": manifest["manifest_cid"]}
        if redundant:
            params["redundancy"] = "2"
        if stream:
            params["stream"] = "1"
        dataset_cid = None
        if training is not None:
            dataset_cid = str(store_part(market.blockstore, training.pop("dataset"))["cid"])
            params.update(training.pop("params"))
        job = JobRequest(
            requester=account,
            kind=TRAINING if training is not None else INFERENCE,
            model_id=model_name,
            input_cid=cid_of(data),
            required_vram_bytes=manifest["vram_required_bytes"],
            max_price_wei=price,
            deadline_ms=now + (timeout_ms or settings.job_deadline_ms),
            nonce=market.next_nonce(),
            submitted_at_ms=now,
            params=params,
            dataset_cid=dataset_cid,
            **(training or {}),
        )
        record = job.signed(key, settings.chain_id, data)
        # Held now, before the log brings the job back to this gateway's market view.
        market.hold(record["job_id"], Hold(account, price, job.deadline_ms + HOLD_GRACE_MS))
        try:
            future = sink.send(SUBMITTED, record, key=hex_key(record["job_id"]))
            await asyncio.wait_for(asyncio.wrap_future(future), 15)
        except BaseException:
            market.unhold(record["job_id"])
            raise
        return record

    async def submit(
        request: Request,
        model_name: str,
        payload: dict[str, Any],
        max_price: int | None,
        timeout_ms: int | None = None,
        training: dict[str, Any] | None = None,
        redundant: bool = False,
    ) -> JobStatus:
        """Start a job and wait for its first result."""
        record = await start(
            request, model_name, payload, max_price, timeout_ms, training, redundant
        )
        status = await market.wait(
            record["job_id"],
            lambda s: bool(s.results) or s.state == "expired",
            (timeout_ms or settings.job_deadline_ms) / 1000 + 5,
        )
        if status is None or not status.results:
            job_id = _hex(record["job_id"])
            raise MarketError(504, "job_expired", f"no node answered job {job_id} in time")
        return status

    def generation(status: JobStatus) -> dict[str, Any]:
        output = status.results[0]["output"]
        document: dict[str, Any] = json.loads(output)
        return document

    def usage(document: dict[str, Any]) -> dict[str, int]:
        prompt, completion = document["prompt_tokens"], len(document["token_ids"])
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    async def openai(request: Request, chat: bool) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(MarketError(400, "invalid_request_error", "the body is not JSON"))
        try:
            if not isinstance(body, dict) or not isinstance(body.get("model"), str):
                raise MarketError(400, "invalid_request_error", "'model' is required")
            if chat:
                messages = body.get("messages")
                if not isinstance(messages, list) or not messages:
                    raise MarketError(
                        400, "invalid_request_error", "'messages' must be a non-empty list"
                    )
                payload: dict[str, Any] = {
                    "messages": [
                        {"role": str(m.get("role")), "content": str(m.get("content"))}
                        for m in messages
                    ]
                }
            else:
                payload = {"prompt": str(body.get("prompt", ""))}
            payload["max_tokens"] = int(
                body.get("max_tokens") or body.get("max_completion_tokens") or 16
            )
            if body.get("stream"):
                record = await start(request, body["model"], payload, None, stream=True)
                ident = ("chatcmpl-" if chat else "cmpl-") + record["job_id"].hex()
                live = _live(market, record, settings.job_deadline_ms / 1000 + 5)
                return StreamingResponse(
                    _stream(ident, int(time.time()), body["model"], live, chat),
                    media_type="text/event-stream",
                )
            status = await submit(request, body["model"], payload, None)
        except MarketError as exc:
            return _error(exc)
        document = generation(status)
        created = int(time.time())
        ident = ("chatcmpl-" if chat else "cmpl-") + status.record["job_id"].hex()
        finish = document["finish_reason"]
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": document["text"]},
                "finish_reason": finish,
            }
        else:
            choice = {
                "index": 0,
                "text": document["text"],
                "finish_reason": finish,
                "logprobs": None,
            }
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": body["model"],
                "choices": [choice],
                "usage": usage(document),
                "lattice": {"job_id": _hex(status.record["job_id"])},
            }
        )

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        return await openai(request, chat=True)

    @api.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        return await openai(request, chat=False)

    @api.get("/v1/models")
    def models() -> dict[str, Any]:
        with market.lock:
            entries = sorted(market.view.models.values(), key=lambda m: m["name"])
        return {
            "object": "list",
            "data": [
                {
                    "id": m["name"],
                    "object": "model",
                    "created": m["registered_at_ms"] // 1000,
                    "owned_by": _hex(m["owner"]),
                    "version": m["version"],
                    "manifest_cid": m["manifest_cid"],
                    "model_type": m["model_type"],
                    "parameter_count": m["parameter_count"],
                    "vram_required_bytes": m["vram_required_bytes"],
                }
                for m in entries
            ],
        }

    @api.post("/v1/models", response_model=None)
    async def register_model(request: Request) -> Response:
        """Announce a model registered on the ledger: {"transaction_hash": "0x.."}. The
        manifest must already be in this gateway's blockstore (POST /v1/content)."""
        try:
            body = await request.json()
            tx_hash = str(body["transaction_hash"])
        except (ValueError, KeyError, TypeError):
            return _error(MarketError(400, "bad_request", 'send {"transaction_hash": "0x..."}'))
        try:
            receipt = rpc.rpc_eth_getTransactionReceipt([tx_hash])
        except (RpcError, LedgerNotReady) as exc:
            return _error(MarketError(400, "bad_request", str(exc)))
        if receipt is None or receipt["status"] != "0x1":
            return _error(
                MarketError(
                    409, "not_registered", "the transaction is not (yet) a successful registration"
                )
            )
        logs = [
            entry
            for entry in receipt["logs"]
            if entry["address"].lower() == _hex(MODEL_REGISTRY)
            and entry["topics"][0] == _hex(MODEL_REGISTERED)
        ]
        if not logs:
            return _error(MarketError(400, "not_registered", "the transaction registered no model"))
        name, cid, version, _ = decode_model_registered(bytes.fromhex(logs[0]["data"][2:]))
        owner = bytes.fromhex(logs[0]["topics"][2][-40:])
        try:
            manifest = load_manifest(market.blockstore.get(cid), cid)
        except (KeyError, ContentError):
            return _error(MarketError(409, "manifest_missing", f"upload manifest {cid} first"))
        if manifest.document.get("name") != name:
            return _error(MarketError(400, "bad_manifest", "the manifest names another model"))
        record = manifest_record(manifest, owner, version, int(time.time() * 1000))
        record["cause"] = None
        await asyncio.wrap_future(sink.send(MODELS, record, key=name))
        return JSONResponse(
            {"model": name, "version": version, "manifest_cid": cid}, status_code=201
        )

    @api.post("/v1/content", response_model=None)
    async def put_content(request: Request) -> Response:
        data = await request.body()
        if len(data) > 4 << 20:
            return _error(MarketError(413, "too_large", "blocks are limited to 4 MiB"))
        claimed = request.headers.get("x-cid")
        cid = cid_of(data)
        if claimed and claimed != cid:
            return _error(
                MarketError(400, "cid_mismatch", f"the body hashes to {cid}, not {claimed}")
            )
        market.blockstore.put(data)
        return JSONResponse({"cid": cid, "size": len(data)}, status_code=201)

    @api.get("/ipfs/{cid}", response_model=None)
    def get_content(cid: str) -> Response:
        try:
            digest_of(cid)
            data = market.blockstore.get(cid)
        except ContentError as exc:
            return _error(MarketError(400, "bad_cid", str(exc)))
        except KeyError:
            return _error(MarketError(404, "not_found", f"no block {cid}"))
        return Response(data, media_type="application/octet-stream")

    @api.get("/v1/nodes")
    def nodes() -> dict[str, Any]:
        with market.lock:
            states = sorted(market.view.nodes.items())
            views = {a: s.view() for a, s in states}
        return {
            "nodes": [
                {
                    "address": _hex(a),
                    "price_wei_per_hour": str(v.price_wei_per_hour),
                    "stake_wei": str(v.stake_wei),
                    "leaving": v.leaving,
                    "memory_bytes": v.vram_bytes,
                    "memory_used_bytes": v.vram_used_bytes,
                    "reputation_bps": v.reputation_bps,
                    "jobs_in_flight": v.jobs_in_flight,
                    "last_seen_ms": v.last_seen_ms,
                    "runtimes": list(v.runtimes),
                    "devices": jsonable(s.registration["devices"]),
                    "cpu_model": s.registration["cpu_model"],
                    "accepted": s.accepted,
                    "rejected": s.rejected,
                }
                for (a, s), v in zip(states, views.values(), strict=True)
            ]
        }

    @api.get("/v1/jobs")
    def recent_jobs(limit: int = 20) -> dict[str, Any]:
        """The most recently submitted jobs, newest first."""
        with market.lock:
            latest = sorted(
                market.jobs.values(), key=lambda j: j.record["submitted_at_ms"], reverse=True
            )[: max(0, min(limit, 500))]
            return {"jobs": [job_json(status) for status in latest]}

    @api.get("/v1/jobs/{job_id}", response_model=None)
    def job(job_id: str) -> Response:
        try:
            key = bytes.fromhex(job_id.removeprefix("0x"))
        except ValueError:
            return _error(MarketError(400, "bad_request", "job ids are 32-byte hex"))
        with market.lock:
            status = market.jobs.get(key)
            body = job_json(status) if status else None
        if body is None:
            return _error(MarketError(404, "not_found", f"no job {job_id}"))
        return JSONResponse(body)

    @api.post("/v1/jobs", response_model=None)
    async def submit_job(request: Request) -> Response:
        """An inference job {"model", "input": {...}, "max_price_wei"?, "timeout_ms"?,
        "redundancy"? (2: run on two nodes, both paid, results compared)} or a
        training job {"kind": "training", "model", "dataset": text, "epochs", "batch_size",
        "learning_rate"?, "seq_len"?, ...}, paid by the API key's account. Answers once a
        node's result is on the log (504 when none came before the deadline: the job is
        then refunded)."""
        try:
            body = await request.json()
            if not isinstance(body, dict) or not isinstance(body.get("model"), str):
                raise MarketError(400, "bad_request", "'model' is required")
            payload = body.get("input", {})
            if not isinstance(payload, dict):
                raise MarketError(400, "bad_request", "'input' must be an object")
            max_price = int(body["max_price_wei"]) if "max_price_wei" in body else None
            timeout = int(body["timeout_ms"]) if "timeout_ms" in body else None
            training = _training(body) if body.get("kind") == "training" else None
            if body.get("redundancy", 1) not in (1, 2):
                raise MarketError(400, "bad_request", "redundancy is 1 or 2 (nodes per job)")
            if (max_price is not None and max_price <= 0) or (timeout is not None and timeout <= 0):
                raise MarketError(
                    400, "bad_request", "max_price_wei and timeout_ms must be positive"
                )
            status = await submit(
                request,
                body["model"],
                payload,
                max_price,
                timeout,
                training,
                body.get("redundancy") == 2,
            )
        except MarketError as exc:
            return _error(exc)
        except ValueError:
            return _error(MarketError(400, "bad_request", "the body is not valid JSON"))
        with market.lock:
            return JSONResponse(job_json(status), status_code=201)

    return api


def _training(body: dict[str, Any]) -> dict[str, Any]:
    """The training part of a REST job: a text dataset, epochs, batch size, SGD settings."""
    dataset = body.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise MarketError(400, "bad_request", "training jobs need a 'dataset' (UTF-8 text)")
    epochs, batch = int(body.get("epochs", 1)), int(body.get("batch_size", 8))
    if not 1 <= epochs <= 1_000 or not 1 <= batch <= 4_096:
        raise MarketError(400, "bad_request", "epochs must be 1..1000 and batch_size 1..4096")
    params = {
        "learning_rate": str(float(body.get("learning_rate", 0.05))),
        "seq_len": str(int(body.get("seq_len", 32))),
    }
    return {"dataset": dataset.encode(), "epochs": epochs, "batch_size": batch, "params": params}


def _moved(seen: int, status: JobStatus) -> bool:
    """Whether a streamed job has news: more tokens, a result, or its expiry."""
    return len(status.tokens) > seen or bool(status.results) or status.state == "expired"


async def _live(
    market: MarketService,
    record: dict[str, Any],
    timeout: float,
) -> AsyncIterator[tuple[str, str | None]]:
    """(text, finish reason) pieces of a streamed job as the node produces them: tokens
    from the first node that streams, then whatever its signed result adds, then the
    finish reason. Raises MarketError when no result comes in time."""
    job_id = record["job_id"]
    node: bytes | None = None
    seen, text = 0, ""
    while True:
        status = await market.wait(job_id, partial(_moved, seen), timeout)
        if status is None:
            break
        with market.lock:
            fresh, seen = status.tokens[seen:], len(status.tokens)
            results = list(status.results)
        for piece in fresh:
            node = node or piece["node"]
            if piece["node"] == node and piece["text"]:
                text += piece["text"]
                yield piece["text"], None
        answer = next((r for r in results if node is None or r["node"] == node), None)
        if answer is not None:
            document = json.loads(answer["output"])
            if document["text"].startswith(text) and len(document["text"]) > len(text):
                yield document["text"][len(text) :], None
            yield "", document["finish_reason"]
            return
        if status.state == "expired":
            break
    raise MarketError(504, "job_expired", f"no node answered job {_hex(job_id)} in time")


async def _stream(
    ident: str,
    created: int,
    model: str,
    pieces: AsyncIterator[tuple[str, str | None]],
    chat: bool,
) -> AsyncIterator[str]:
    kind = "chat.completion.chunk" if chat else "text_completion"
    if chat:
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        yield _sse(ident, kind, created, model, first)
    try:
        async for piece, finish in pieces:
            if chat:
                delta = {"content": piece} if piece or finish is None else {}
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece, "finish_reason": finish}
            yield _sse(ident, kind, created, model, choice)
    except MarketError as exc:
        error = {"error": {"code": exc.code, "message": exc.message, "type": exc.code}}
        yield f"data: {json.dumps(error)}\n\n"
    yield "data: [DONE]\n\n"


def _sse(ident: str, kind: str, created: int, model: str, choice: dict[str, Any]) -> str:
    chunk = {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice]}
    return f"data: {json.dumps(chunk)}\n\n"


__all__ = ["MarketService", "new_api_key", "router", "uuid"]
