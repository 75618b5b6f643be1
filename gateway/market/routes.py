"""The market's REST routes: small handlers over `MarketService` (what the log says) and
`JobService` (jobs this gateway starts), plus the OpenAI-compatible ones
(`gateway.market.openai`).

    GET  /v1/models            POST /v1/models       (announce a registered model)
    POST /v1/content           GET  /ipfs/{cid}      (content-addressed blocks)
    GET  /v1/nodes
    GET  /v1/jobs              GET  /v1/jobs/{id}    POST /v1/jobs
    POST /v1/completions       POST /v1/chat/completions

Errors are `{"error": {"code", "message", "type"}}` (the OpenAI shape) with the status
that fits: 400 bad input, 401 no or unknown API key, 402 a deposit that does not cover the
job, 404 unknown model or job, 409 not yet registered, 413 too large, 429 over the API
key's rate or concurrency (`Retry-After`; `limited` says which routes, `gateway.guard`
answers), 503 the ledger unreadable, 504 no node answered in time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from gateway.chainview import LedgerNotReady
from gateway.formats import BadParam, parse_data
from gateway.ledger import LedgerQueries
from gateway.market.openai import Completions, error_response
from gateway.market.service import (
    MODELS,
    PEER_HEADER,
    JobOrder,
    JobService,
    MarketError,
    MarketService,
    Training,
)
from processors.abc import RecordSink
from processors.compute.models import load_manifest, manifest_record
from processors.compute.runtime import FetchError
from processors.execution.genesis import MODEL_REGISTRY
from processors.market.chain import MODEL_REGISTERED, decode_model_registered
from processors.market.content import ContentError, cid_of, digest_of
from processors.market.lifecycle import Job
from schemas.codec import jsonable
from schemas.events import JobTokens
from streams.settings import Settings

#: Where content blocks are uploaded: its body limit is `max_content_bytes`.
CONTENT_UPLOAD = "/v1/content"
#: The routes limited per API key (`gateway.limits`): all but reads of content blocks by
#: CID, which workers and peers make by the thousand for one model and which cost a
#: file read.
_LIMITED = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/nodes", "/v1/jobs")


def limited(method: str, path: str) -> bool:
    """Whether a request counts against its client's rate and concurrency limits."""
    return path in _LIMITED or path == CONTENT_UPLOAD or path.startswith("/v1/jobs/")


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def job_json(job: Job, tokens: list[JobTokens]) -> dict[str, Any]:
    """A job as `/v1/jobs` shows it: its state, every record of it, the output decoded."""
    record = job.submitted
    assert record is not None
    result = job.results[0] if job.results else None
    output: Any = None
    if result is not None and result.output is not None:
        try:
            output = json.loads(result.output)
        except ValueError:
            output = {"bytes": len(result.output)}
    return {
        "id": _hex(record.job_id),
        "state": job.state,
        "kind": record.kind.lower(),
        "model": record.model_id,
        "requester": _hex(record.requester),
        "max_price_wei": str(record.max_price_wei),
        "deadline_ms": record.deadline_ms,
        "assignments": [
            jsonable(dataclasses.replace(a, job=None).to_avro()) for a in job.assignments
        ],
        "result": jsonable(dataclasses.replace(result, output=None).to_avro()) if result else None,
        "result_count": len(job.results),
        "streamed_tokens": sum(len(t.token_ids) for t in tokens),
        "output": output,
        "verdicts": [jsonable(v.to_avro()) for v in job.verdicts],
        "settlements": [jsonable(s.to_avro()) for s in job.settlements],
    }


def _training(body: dict[str, Any]) -> Training:
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
    return Training(dataset.encode(), epochs, batch, params)


def _order(body: Any) -> JobOrder:
    """The job a `POST /v1/jobs` body asks for; MarketError when malformed."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise MarketError(400, "bad_request", "'model' is required")
    payload = body.get("input", {})
    if not isinstance(payload, dict):
        raise MarketError(400, "bad_request", "'input' must be an object")
    max_price = int(body["max_price_wei"]) if "max_price_wei" in body else None
    timeout = int(body["timeout_ms"]) if "timeout_ms" in body else None
    if body.get("redundancy", 1) not in (1, 2):
        raise MarketError(400, "bad_request", "redundancy is 1 or 2 (nodes per job)")
    if (max_price is not None and max_price <= 0) or (timeout is not None and timeout <= 0):
        raise MarketError(400, "bad_request", "max_price_wei and timeout_ms must be positive")
    return JobOrder(
        model=body["model"],
        payload=payload,
        max_price=max_price,
        timeout_ms=timeout,
        training=_training(body) if body.get("kind") == "training" else None,
        redundant=body.get("redundancy") == 2,
    )


class MarketRoutes:
    def __init__(
        self,
        settings: Settings,
        market: MarketService,
        ledger: LedgerQueries,
        sink: RecordSink,
    ) -> None:
        self.market = market
        self.ledger = ledger
        self.sink = sink
        self.jobs = JobService(settings, market, ledger, sink)

    # -- models and content ----------------------------------------------------------------

    async def models(self) -> dict[str, Any]:
        with self.market.lock:
            entries = sorted(self.market.view.models.values(), key=lambda m: m.name)
        return {
            "object": "list",
            "data": [
                {
                    "id": m.name,
                    "object": "model",
                    "created": m.registered_at_ms // 1000,
                    "owned_by": _hex(m.owner),
                    "version": m.version,
                    "manifest_cid": m.manifest_cid,
                    "model_type": m.model_type,
                    "parameter_count": m.parameter_count,
                    "vram_required_bytes": m.vram_required_bytes,
                }
                for m in entries
            ],
        }

    async def register_model(self, request: Request) -> Response:
        """Announce a model registered on the ledger: {"transaction_hash": "0x.."}. The
        manifest must already be in this gateway's blockstore (POST /v1/content)."""
        try:
            body = await request.json()
            tx_hash = parse_data(str(body["transaction_hash"]), "transaction_hash", 32)
        except (ValueError, KeyError, TypeError):
            return error_response(
                MarketError(400, "bad_request", 'send {"transaction_hash": "0x..."}')
            )
        try:
            receipt = self.ledger.receipt(tx_hash)
        except LedgerNotReady as exc:
            return error_response(MarketError(400, "bad_request", str(exc)))
        if receipt is None or receipt.status != 1:
            message = "the transaction is not (yet) a successful registration"
            return error_response(MarketError(409, "not_registered", message))
        logs = [
            entry
            for entry in receipt.logs
            if entry.address == MODEL_REGISTRY and entry.topics[:1] == (MODEL_REGISTERED,)
        ]
        if not logs:
            message = "the transaction registered no model"
            return error_response(MarketError(400, "not_registered", message))
        name, cid, version, _ = decode_model_registered(logs[0].data)
        owner = logs[0].topics[2][-20:]
        try:
            manifest = load_manifest(self.market.blockstore.get(cid), cid)
        except (KeyError, ContentError):
            return error_response(
                MarketError(409, "manifest_missing", f"upload manifest {cid} first")
            )
        if manifest.document.get("name") != name:
            message = "the manifest names another model"
            return error_response(MarketError(400, "bad_manifest", message))
        record = manifest_record(manifest, owner, version, int(time.time() * 1000))
        await asyncio.wrap_future(self.sink.send(MODELS, record, key=name))
        body = {"model": name, "version": version, "manifest_cid": cid}
        return JSONResponse(body, status_code=201)

    async def put_content(self, request: Request) -> Response:
        """A content block; `gateway.guard` has refused one over `max_content_bytes`."""
        data = await request.body()
        claimed = request.headers.get("x-cid")
        cid = cid_of(data)
        if claimed and claimed != cid:
            message = f"the body hashes to {cid}, not {claimed}"
            return error_response(MarketError(400, "cid_mismatch", message))
        self.market.blockstore.put(data)
        return JSONResponse({"cid": cid, "size": len(data)}, status_code=201)

    async def get_content(self, cid: str, request: Request) -> Response:
        """A block from this gateway's disk or, failing that, from a peer's (not when a
        peer is the one asking)."""
        try:
            digest_of(cid)
            data = self.market.blockstore.get(cid)
        except ContentError as exc:
            return error_response(MarketError(400, "bad_cid", str(exc)))
        except KeyError:
            peers = self.market.peers
            if not peers.peers or request.headers.get(PEER_HEADER):
                return error_response(MarketError(404, "not_found", f"no block {cid}"))
            try:
                data = await asyncio.to_thread(peers.get, cid)
            except FetchError as exc:
                return error_response(MarketError(404, "not_found", str(exc)))
        return Response(data, media_type="application/octet-stream")

    # -- nodes and jobs --------------------------------------------------------------------

    async def nodes(self) -> dict[str, Any]:
        with self.market.lock:
            states = sorted(self.market.view.nodes.items())
            listed = [(a, s, s.view()) for a, s in states]
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
                    "devices": [jsonable(d.to_avro()) for d in s.registration.devices],
                    "cpu_model": s.registration.cpu_model,
                    "accepted": s.accepted,
                    "rejected": s.rejected,
                }
                for a, s, v in listed
            ]
        }

    def _job_json(self, job: Job) -> dict[str, Any]:
        return job_json(job, self.market.tokens.get(job.job_id, []))

    async def recent_jobs(self, limit: int = 20) -> dict[str, Any]:
        """The most recently submitted jobs, newest first."""
        with self.market.lock:
            jobs = sorted(
                self.market.jobs.values(),
                key=lambda j: j.submitted.submitted_at_ms if j.submitted else 0,
                reverse=True,
            )[: max(0, min(limit, 500))]
            return {"jobs": [self._job_json(job) for job in jobs]}

    async def job(self, job_id: str) -> Response:
        try:
            key = parse_data("0x" + job_id.removeprefix("0x"), "job id", 32)
        except BadParam:
            return error_response(MarketError(400, "bad_request", "job ids are 32-byte hex"))
        with self.market.lock:
            found = self.market.submitted(key)
            body = self._job_json(found) if found else None
        if body is None:
            return error_response(MarketError(404, "not_found", f"no job {job_id}"))
        return JSONResponse(body)

    async def submit_job(self, request: Request) -> Response:
        """An inference job {"model", "input": {...}, "max_price_wei"?, "timeout_ms"?,
        "redundancy"? (2: run on two nodes, both paid, results compared)} or a
        training job {"kind": "training", "model", "dataset": text, "epochs", "batch_size",
        "learning_rate"?, "seq_len"?, ...}, paid by the API key's account. Answers once a
        node's result is on the log (504 when none came before the deadline: the job is
        then refunded)."""
        try:
            order = _order(await request.json())
            job = await self.jobs.submit(request.headers.get("authorization", ""), order)
        except MarketError as exc:
            return error_response(exc)
        except ValueError:
            return error_response(MarketError(400, "bad_request", "the body is not valid JSON"))
        with self.market.lock:
            return JSONResponse(self._job_json(job), status_code=201)


def router(
    settings: Settings, market: MarketService, ledger: LedgerQueries, sink: RecordSink
) -> APIRouter:
    routes = MarketRoutes(settings, market, ledger, sink)
    completions = Completions(routes.jobs)
    api = APIRouter()
    api.add_api_route(
        "/v1/chat/completions", completions.chat, methods=["POST"], response_model=None
    )
    api.add_api_route("/v1/completions", completions.text, methods=["POST"], response_model=None)
    api.add_api_route("/v1/models", routes.models, methods=["GET"])
    api.add_api_route("/v1/models", routes.register_model, methods=["POST"], response_model=None)
    api.add_api_route(CONTENT_UPLOAD, routes.put_content, methods=["POST"], response_model=None)
    api.add_api_route("/ipfs/{cid}", routes.get_content, methods=["GET"], response_model=None)
    api.add_api_route("/v1/nodes", routes.nodes, methods=["GET"])
    api.add_api_route("/v1/jobs", routes.recent_jobs, methods=["GET"])
    api.add_api_route("/v1/jobs/{job_id}", routes.job, methods=["GET"], response_model=None)
    api.add_api_route("/v1/jobs", routes.submit_job, methods=["POST"], response_model=None)
    return api
