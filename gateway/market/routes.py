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
answers), 503 the ledger unreadable or the log not taking records (a broker restarting),
504 no node answered in time. A body, query or header that does not fit its model
(`gateway.market.models`) is a 400 in that shape too (`MarketRoute`), as OpenAI answers,
not FastAPI's 422.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from gateway.chainview import LedgerNotReady
from gateway.formats import BadParam, parse_data
from gateway.ledger import LedgerQueries
from gateway.market.models import (
    CONTENT_BODY,
    JOB_ERRORS,
    ChatCompletion,
    Cid,
    EmbeddingList,
    IpfsPeerInfo,
    JobId,
    JobInfo,
    JobList,
    JobRequest,
    ModelCard,
    ModelId,
    ModelList,
    ModelRegistration,
    NodeInfo,
    NodeList,
    RegisteredModel,
    StoredContent,
    TextCompletion,
    market_errors,
    streamed,
)
from gateway.market.openai import Authorization, Completions, Embeddings, error_response
from gateway.market.service import (
    MODELS,
    PEER_HEADER,
    JobOrder,
    JobService,
    MarketError,
    MarketService,
    Training,
)
from gateway.models import BINARY
from processors.abc import RecordSink
from processors.compute.models import load_manifest, manifest_record
from processors.compute.runtime import FetchError
from processors.execution.genesis import MODEL_REGISTRY
from processors.market.chain import MODEL_REGISTERED, decode_model_registered
from processors.market.content import ContentError, cid_of, digest_of
from processors.market.lifecycle import Job
from schemas.codec import jsonable
from schemas.events import JobTokens, ModelManifest
from streams.kafka import DeliveryError
from streams.settings import Settings

#: Where content blocks are uploaded: its body limit is `max_content_bytes`.
CONTENT_UPLOAD = "/v1/content"
#: The routes limited per API key (`gateway.limits`): all but reads of content blocks by
#: CID, which workers and peers make by the thousand for one model and which cost a
#: file read.
_LIMITED = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/nodes",
    "/v1/jobs",
)


def limited(method: str, path: str) -> bool:
    """Whether a request counts against its client's rate and concurrency limits."""
    return (
        path in _LIMITED or path == CONTENT_UPLOAD or path.startswith(("/v1/jobs/", "/v1/models/"))
    )


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


def _training(body: JobRequest) -> Training:
    """The training part of a REST job: a text dataset, epochs, batch size, SGD settings."""
    if not body.dataset:
        raise MarketError(400, "bad_request", "training jobs need a 'dataset' (UTF-8 text)")
    params = {"learning_rate": str(body.learning_rate), "seq_len": str(body.seq_len)}
    return Training(body.dataset.encode(), body.epochs, body.batch_size, params)


def _order(body: JobRequest) -> JobOrder:
    """The job a `POST /v1/jobs` body asks for; MarketError when it cannot be one."""
    return JobOrder(
        model=body.model,
        payload=body.input,
        max_price=body.max_price_wei,
        timeout_ms=body.timeout_ms,
        training=_training(body) if body.kind == "training" else None,
        redundant=body.redundancy == 2,
    )


class MarketRoute(APIRoute):
    """A route whose bad input (body, query, path, header) is a 400 in the market's error
    shape: OpenAI's clients read that shape, and OpenAI answers 400, not 422."""

    code = "bad_request"

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handle(request)
            except RequestValidationError as exc:
                return error_response(MarketError(400, self.code, _first_problem(exc)))
            except HTTPException as exc:  # FastAPI's own: a body it could not read at all
                return error_response(MarketError(exc.status_code, self.code, str(exc.detail)))
            except (DeliveryError, TimeoutError, LedgerNotReady) as exc:
                # The log or the ledger is down for now (a broker restarting): the request
                # may be sent again, and nothing of it was acknowledged.
                message = f"the log or the ledger is unavailable: {exc}"
                return error_response(MarketError(503, "unavailable", message))

        return guarded


class OpenAIRoute(MarketRoute):
    code = "invalid_request_error"


def _first_problem(exc: RequestValidationError) -> str:
    problems = exc.errors()
    if not problems:
        return "the request is malformed"
    where = ".".join(str(part) for part in problems[0].get("loc", ())[1:])
    message = str(problems[0].get("msg", "invalid"))
    return f"{where}: {message}" if where else message


class OctetStream(Response):
    media_type = "application/octet-stream"


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

    async def models(self) -> ModelList:
        """The registered models, newest version of each (OpenAI's list shape)."""
        with self.market.lock:
            entries = sorted(self.market.view.models.values(), key=lambda m: m.name)
        return ModelList(
            object="list", data=[_card(m, self.jobs.task_of(m.manifest_cid)) for m in entries]
        )

    async def ipfs_peer(self) -> IpfsPeerInfo | Response:
        """The node's IPFS peer: how other peers reach it (404 when the node runs none)."""
        info = self.market.ipfs_peer()
        if info is None:
            return error_response(MarketError(404, "no_ipfs_peer", "this node runs no IPFS peer"))
        return IpfsPeerInfo(peer_id=info["peer_id"], addrs=info["addrs"])

    async def model(self, model_id: ModelId) -> ModelCard | Response:
        """One registered model by name, its newest version (OpenAI's model shape)."""
        with self.market.lock:
            found = self.market.view.models.get(model_id)
        if found is None:
            return error_response(
                MarketError(404, "model_not_found", f"no model {model_id!r} is registered")
            )
        return _card(found, self.jobs.task_of(found.manifest_cid))

    async def register_model(self, body: ModelRegistration) -> RegisteredModel | Response:
        """Announce a model registered on the ledger: {"transaction_hash": "0x.."}. The
        manifest must already be in this gateway's blockstore (POST /v1/content)."""
        tx_hash = bytes.fromhex(body.transaction_hash[2:])
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
            data = self.market.blockstore.get(cid)
        except (KeyError, ContentError):
            return error_response(
                MarketError(409, "manifest_missing", f"upload manifest {cid} first")
            )
        # The gateway reads the manifest, never the model's files (`lattice model import`
        # checked those); a manifest anyone could have uploaded is bad input, not a 500.
        try:
            manifest = load_manifest(data, cid)
            if manifest.document.get("name") != name:
                message = "the manifest names another model"
                return error_response(MarketError(400, "bad_manifest", message))
            record = manifest_record(manifest, owner, version, int(time.time() * 1000))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            message = f"manifest {cid} is not a model manifest ({type(exc).__name__}: {exc})"
            return error_response(MarketError(400, "bad_manifest", message))
        await asyncio.wrap_future(self.sink.send(MODELS, record, key=name))
        return RegisteredModel(model=name, version=version, manifest_cid=cid)

    async def put_content(
        self,
        request: Request,
        x_cid: Annotated[str | None, Header(description="the CID the body must hash to")] = None,
    ) -> StoredContent | Response:
        """Store a content block (a model chunk or manifest, a dataset); its CID.
        `gateway.guard` has refused one over `max_content_bytes`."""
        data = await request.body()
        cid = cid_of(data)
        if x_cid and x_cid != cid:
            message = f"the body hashes to {cid}, not {x_cid}"
            return error_response(MarketError(400, "cid_mismatch", message))
        self.market.blockstore.put(data)
        return StoredContent(cid=cid, size=len(data))

    async def get_content(self, cid: Cid, request: Request) -> Response:
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
        return OctetStream(data)

    # -- nodes and jobs --------------------------------------------------------------------

    async def nodes(self) -> NodeList:
        """The GPU nodes registered on the log, with their stake and reputation."""
        with self.market.lock:
            states = sorted(self.market.view.nodes.items())
            listed = [(a, s, s.view()) for a, s in states]
        return NodeList(
            nodes=[
                NodeInfo(
                    address=_hex(a),
                    price_wei_per_hour=str(v.price_wei_per_hour),
                    stake_wei=str(v.stake_wei),
                    leaving=v.leaving,
                    memory_bytes=v.vram_bytes,
                    memory_used_bytes=v.vram_used_bytes,
                    reputation_bps=v.reputation_bps,
                    jobs_in_flight=v.jobs_in_flight,
                    last_seen_ms=v.last_seen_ms,
                    runtimes=list(v.runtimes),
                    devices=[jsonable(d.to_avro()) for d in s.registration.devices],
                    cpu_model=s.registration.cpu_model,
                    accepted=s.accepted,
                    rejected=s.rejected,
                )
                for a, s, v in listed
            ]
        )

    def _job_json(self, job: Job) -> JobInfo:
        return JobInfo.model_validate(job_json(job, self.market.tokens.get(job.job_id, [])))

    async def recent_jobs(self, limit: int = 20) -> JobList:
        """The most recently submitted jobs, newest first (`limit`: at most 500)."""
        with self.market.lock:
            jobs = sorted(
                self.market.jobs.values(),
                key=lambda j: j.submitted.submitted_at_ms if j.submitted else 0,
                reverse=True,
            )[: max(0, min(limit, 500))]
            return JobList(jobs=[self._job_json(job) for job in jobs])

    async def job(self, job_id: JobId) -> JobInfo | Response:
        """A job by id (32-byte hex, 0x optional): its state and every record of it."""
        try:
            key = parse_data("0x" + job_id.removeprefix("0x"), "job id", 32)
        except BadParam:
            return error_response(MarketError(400, "bad_request", "job ids are 32-byte hex"))
        with self.market.lock:
            found = self.market.submitted(key)
            body = self._job_json(found) if found else None
        if body is None:
            return error_response(MarketError(404, "not_found", f"no job {job_id}"))
        return body

    async def submit_job(self, body: JobRequest, key: Authorization) -> JobInfo | Response:
        """An inference job {"model", "input": {...}, "max_price_wei"?, "timeout_ms"?,
        "redundancy"? (2: run on two nodes, both paid, results compared)} or a
        training job {"kind": "training", "model", "dataset": text, "epochs", "batch_size",
        "learning_rate"?, "seq_len"?, ...}, paid by the API key's account. Answers once a
        node's result is on the log (504 when none came before the deadline: the job is
        then refunded)."""
        try:
            job = await self.jobs.submit(key, _order(body))
        except MarketError as exc:
            return error_response(exc)
        with self.market.lock:
            return self._job_json(job)


def _add_openai_routes(api: APIRouter, jobs: JobService) -> None:
    """The OpenAI-compatible routes, answered in OpenAI's error shape."""
    completions = Completions(jobs)
    embeddings = Embeddings(jobs)
    api.add_api_route(
        "/v1/chat/completions",
        completions.chat,
        methods=["POST"],
        response_model=ChatCompletion,
        route_class_override=OpenAIRoute,
        responses={**streamed("chat.completion.chunk events, then [DONE]"), **JOB_ERRORS},
    )
    api.add_api_route(
        "/v1/completions",
        completions.text,
        methods=["POST"],
        response_model=TextCompletion,
        route_class_override=OpenAIRoute,
        responses={**streamed("text_completion events, then [DONE]"), **JOB_ERRORS},
    )
    api.add_api_route(
        "/v1/embeddings",
        embeddings.create,
        methods=["POST"],
        response_model=EmbeddingList,
        route_class_override=OpenAIRoute,
        responses=JOB_ERRORS,
    )


def router(
    settings: Settings, market: MarketService, ledger: LedgerQueries, sink: RecordSink
) -> APIRouter:
    routes = MarketRoutes(settings, market, ledger, sink)
    api = APIRouter(route_class=MarketRoute)
    _add_openai_routes(api, routes.jobs)
    api.add_api_route("/v1/models", routes.models, methods=["GET"])
    api.add_api_route(
        "/v1/models/{model_id}",
        routes.model,
        methods=["GET"],
        response_model=ModelCard,
        responses=market_errors(404),
    )
    api.add_api_route(
        "/v1/models",
        routes.register_model,
        methods=["POST"],
        status_code=201,
        response_model=RegisteredModel,
        responses=market_errors(400, 409),
    )
    api.add_api_route(
        CONTENT_UPLOAD,
        routes.put_content,
        methods=["POST"],
        status_code=201,
        response_model=StoredContent,
        openapi_extra={"requestBody": CONTENT_BODY},
        responses=market_errors(400, 413),
    )
    api.add_api_route(
        "/ipfs/{cid}",
        routes.get_content,
        methods=["GET"],
        response_class=Response,  # no media type of its own: the errors stay JSON
        responses={200: {"content": {OctetStream.media_type: BINARY}}, **market_errors(400, 404)},
    )
    api.add_api_route("/v1/nodes", routes.nodes, methods=["GET"])
    api.add_api_route(
        "/v1/ipfs",
        routes.ipfs_peer,
        methods=["GET"],
        response_model=IpfsPeerInfo,
        responses=market_errors(404),
    )
    api.add_api_route("/v1/jobs", routes.recent_jobs, methods=["GET"], responses=market_errors(400))
    api.add_api_route(
        "/v1/jobs/{job_id}",
        routes.job,
        methods=["GET"],
        response_model=JobInfo,
        responses=market_errors(400, 404),
    )
    api.add_api_route(
        "/v1/jobs",
        routes.submit_job,
        methods=["POST"],
        status_code=201,
        response_model=JobInfo,
        responses=JOB_ERRORS,
    )
    return api


def _card(model: ModelManifest, task: str | None) -> ModelCard:
    return ModelCard(
        task=task,
        id=model.name,
        object="model",
        created=model.registered_at_ms // 1000,
        owned_by=_hex(model.owner),
        version=model.version,
        manifest_cid=model.manifest_cid,
        model_type=model.model_type,
        parameter_count=model.parameter_count,
        vram_required_bytes=model.vram_required_bytes,
    )
