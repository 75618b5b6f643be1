"""The gateway application.

The layers, from the outside in: HTTP framing here and in `gateway.jsonrpc`, `gateway.rest`,
`gateway.ws` and `gateway.market`; then the typed layers they all call, transaction intake
(`gateway.intake`) and ledger queries (`gateway.ledger`) over the chain view
(`gateway.chainview`), the gateway's followers of the log (`gateway.dagview`,
`gateway.checkpointview`, `gateway.market.service`).

`POST /v1/transactions` is the ledger's front door: the intake decodes a raw signed
transaction, applies every stateless check, with a ledger view the stateful ones too (nonce
too low, insufficient funds), and produces it to `lattice.tx.submitted` keyed by sender,
answering only once the broker acknowledged it. A bad transaction gets a 4xx JSON error
`{"error": {"code", "message"}}` and nothing is produced.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.chainview import ChainView, LedgerNotReady
from gateway.checkpointview import CheckpointView
from gateway.dagview import DagView
from gateway.devaccounts import DevAccounts
from gateway.guard import Guard, GuardRules
from gateway.intake import TransactionIntake, Unavailable
from gateway.jsonrpc import JsonRpc, Methods, ProcessStatus
from gateway.jsonrpc_accounts import AccountMethods
from gateway.jsonrpc_debug import DebugMethods
from gateway.jsonrpc_pool import PoolMethods
from gateway.jsonrpc_simulate import SimulateMethods
from gateway.ledger import LedgerQueries
from gateway.limits import Limiter, RequestLimits, Slots
from gateway.market import MarketService
from gateway.market import router as market_router
from gateway.market.routes import CONTENT_UPLOAD
from gateway.market.routes import limited as market_limited
from gateway.models import (
    BINARY,
    JSON_RPC_BODY,
    RAW_TRANSACTION_BODY,
    Health,
    JsonRpcAnswer,
    Network,
    Ready,
    RpcMethod,
    SubmittedTransaction,
    errors,
)
from gateway.pendingview import PendingView
from gateway.rest import router as rest_router
from gateway.ws import serve as serve_socket
from processors.abc import RecordSink
from processors.execution import snapshots
from processors.execution.transactions import ChainRules, InvalidTransaction, parse_hex
from streams.metrics import REPLICA_DIVERGENCES
from streams.settings import Settings

DASHBOARD = Path(__file__).parent / "static" / "dashboard.html"
START = Path(__file__).parent / "static" / "start.html"


def client_version() -> str:
    try:
        return f"lattice/{version('lattice')}"
    except PackageNotFoundError:  # running from a source tree without installing
        return "lattice/dev"


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _raw_hex(body: bytes, content_type: str) -> str:
    """The 0x-hex string from a body: JSON `"0x.."` or `{"raw": "0x.."}`, or plain text."""
    if "json" in content_type:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidTransaction("bad_json", "the request body is not valid JSON") from None
        if isinstance(parsed, dict):
            parsed = parsed.get("raw")
        if not isinstance(parsed, str):
            raise InvalidTransaction(
                "not_hex", 'send the transaction as a JSON string "0x..." or {"raw": "0x..."}'
            )
        return parsed
    try:
        return body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InvalidTransaction("not_hex", "the request body is not ASCII hex") from None


#: Browsers may call the gateway from any origin (dApps served elsewhere), as anvil and
#: Hardhat allow: JSON-RPC carries no cookies or ambient credentials.
CORS_ORIGIN = [(b"access-control-allow-origin", b"*")]
CORS_RPC = ("POST", "OPTIONS")
CORS_RPC_HEADERS = [
    *CORS_ORIGIN,
    (b"access-control-allow-methods", b"POST, OPTIONS"),
    (b"access-control-allow-headers", b"content-type, authorization"),
    (b"access-control-max-age", b"86400"),
]


class JsonRpcFront:
    """`POST /` (JSON-RPC) served straight from ASGI, ahead of FastAPI.

    A JSON-RPC call is the gateway's hot path: FastAPI's middleware stack, router and
    endpoint machinery cost ~0.1 ms a request, a sixth of a whole `eth_blockNumber`. Every
    other request passes through, once the ledger view has caught up with execution. An
    unexpected error in a call is the ASGI server's to log and answer (500), as it would be
    behind FastAPI.
    """

    def __init__(self, app: ASGIApp, rpc: JsonRpc, refresh: Callable[[], object]) -> None:
        self.app = app
        self.rpc = rpc
        self.refresh = refresh

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # Every HTTP read (JSON-RPC, the REST mirrors, the market's deposit checks) sees
            # what execution committed up to now (~10 us when nothing changed).
            self.refresh()
        if scope["type"] != "http" or scope["path"] != "/" or scope["method"] not in CORS_RPC:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":  # a browser's preflight: any origin may call
            await send({"type": "http.response.start", "status": 204, "headers": CORS_RPC_HEADERS})
            await send({"type": "http.response.body", "body": b""})
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        answer = await self.rpc.handle(b"".join(chunks))
        if answer is None:  # notifications only
            await send({"type": "http.response.start", "status": 204, "headers": CORS_ORIGIN})
            await send({"type": "http.response.body", "body": b""})
            return
        body = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *CORS_ORIGIN,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class GatewayApp(FastAPI):
    """FastAPI with `JsonRpcFront` ahead of its whole middleware stack (error handling,
    telemetry, routing), which cost a JSON-RPC call ~0.1 ms, and the limits
    (`gateway.guard`) ahead of everything."""

    def __init__(self, guard: tuple[GuardRules, Limiter], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guard = guard
        self.json_rpc: tuple[JsonRpc, Callable[[], object]] | None = None
        #: Routes that answer bad input with a 400 of their own (`MarketRoute`).
        self.own_bad_input: list[BaseRoute] = []

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if self.json_rpc is not None:
            stack = JsonRpcFront(stack, *self.json_rpc)
        return Guard(stack, *self.guard)

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            document = super().openapi()
            # FastAPI documents a 422 for every route with parameters; the market's routes
            # answer their bad input with a 400 in their own error shape instead.
            for route in self.own_bad_input:
                assert isinstance(route, APIRoute)
                for method in route.methods or ():
                    operation = document["paths"][route.path_format][method.lower()]
                    operation["responses"].pop("422", None)
        return self.openapi_schema  # type: ignore[return-value]


def guard_of(settings: Settings) -> tuple[GuardRules, Limiter]:
    """The limits of the settings: body limits on every route (content uploads their own),
    per-client limits on the market's (`gateway.market.routes.limited`)."""

    def body_limit(path: str) -> int:
        if path == CONTENT_UPLOAD:
            return settings.max_content_bytes
        return settings.max_body_bytes

    limits = RequestLimits(settings.rate_limit, settings.rate_burst, settings.max_concurrent)
    return GuardRules(body_limit, market_limited), Limiter(limits)


def create_app(
    settings: Settings,
    sink: RecordSink,
    view: ChainView | None = None,
    dag: DagView | None = None,
    checkpoints: CheckpointView | None = None,
    market: MarketService | None = None,
    processes: ProcessStatus | None = None,
    bootstrap: str | None = None,
    dev_keys: Sequence[str] = (),
) -> FastAPI:
    """The gateway: transaction intake always; with a ledger view, JSON-RPC (HTTP and
    WebSocket), the REST mirrors and, with a market service, the market's routes. With
    `bootstrap`, it follows the network's pending transactions on the log (close it with
    `close_followers`). `dev_keys`: the keys JSON-RPC signs with for its clients
    (`gateway.devaccounts`; a devnet's)."""
    rules = ChainRules(settings.chain_id, settings.max_tx_bytes, settings.block_gas_limit)
    app = GatewayApp(
        guard_of(settings), title="Lattice gateway", version=client_version().split("/")[1]
    )
    app.add_middleware(
        CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"]
    )
    ledger = None
    if view is not None:
        ledger = LedgerQueries(
            view,
            block_gas_limit=settings.block_gas_limit,
            checkpoints=checkpoints,
            max_log_range=settings.max_log_range,
            max_log_results=settings.max_log_results,
        )
    intake = TransactionIntake(rules, sink, ledger)
    #: Followers the app runs itself, for its owner to close (`close_followers`).
    app.state.followers = []
    if bootstrap is not None and ledger is not None:
        app.state.followers.append(PendingView(bootstrap, intake))
    rpc = None
    if ledger is not None and view is not None:
        methods = json_rpc_methods(
            ledger,
            intake,
            chain_id=settings.chain_id,
            dag=dag,
            processes=processes,
            dev_keys=dev_keys,
        )
        rpc = JsonRpc(methods)
        # ~10 us when execution committed nothing new (ChainView.refresh).
        app.json_rpc = (rpc, view.refresh)
        if market is not None:
            market_api = market_router(settings, market, ledger, sink)
            app.include_router(market_api)
            app.own_bad_input.extend(market_api.routes)
        app.include_router(rest_router(ledger))
    _json_rpc_routes(app, settings, rpc, view)
    app.state.readiness = Readiness(ledger)
    _operator_routes(app, settings, checkpoints, market)
    _network_routes(app, settings, rpc, bootstrap)
    if view is not None:
        _snapshot_route(app, view.store_path.parent)
    _transaction_route(app, intake, body_limit=2 * settings.max_tx_bytes + 1024)
    return app


def json_rpc_methods(
    ledger: LedgerQueries,
    intake: TransactionIntake,
    *,
    chain_id: int,
    dag: DagView | None = None,
    processes: ProcessStatus | None = None,
    dev_keys: Sequence[str] = (),
) -> Methods:
    """Every JSON-RPC method the gateway serves: `Methods` and its groups (the pool,
    traces, simulation; the dev accounts' signing when given their keys)."""
    groups: list[object] = [
        PoolMethods(ledger, intake),
        DebugMethods(ledger),
        SimulateMethods(ledger),
    ]
    if dev_keys:
        groups.append(AccountMethods(DevAccounts.of(dev_keys), ledger, intake, chain_id))
    return Methods(
        ledger,
        intake,
        chain_id=chain_id,
        client_version=client_version(),
        dag=dag,
        processes=processes,
        groups=groups,
    )


def _json_rpc_routes(
    app: FastAPI, settings: Settings, rpc: JsonRpc | None, view: ChainView | None
) -> None:
    connections = Slots(settings.max_ws_connections)

    @app.websocket("/")
    async def json_rpc_socket(socket: WebSocket) -> None:
        """JSON-RPC over WebSocket, with subscriptions (gateway.ws)."""
        if rpc is None or view is None:
            await socket.close(code=1011, reason="JSON-RPC is not served by this gateway")
            return
        await serve_socket(
            socket,
            rpc,
            view.refresh,
            max_subscriptions=settings.max_subscriptions,
            connections=connections,
        )

    @app.post(
        "/",
        response_model=None,
        openapi_extra={"requestBody": JSON_RPC_BODY},
        responses={
            200: {"model": JsonRpcAnswer, "description": "the response document"},
            204: {"description": "the body held notifications only"},
        },
    )
    async def json_rpc(request: Request) -> Response:
        """Ethereum JSON-RPC 2.0, single or batch.

        With a ledger view, `JsonRpcFront` answers these requests before they reach this
        route; it stays for the OpenAPI schema and for a gateway without JSON-RPC."""
        return JSONResponse(
            {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32601, "message": "JSON-RPC is not served by this gateway"},
            }
        )


class Readiness:
    """Whether the gateway can serve: live once it answers; ready once its ledger answers
    state reads (execution has written the genesis, and the gateway's view opened it).
    A gateway without a ledger (intake only) is ready as soon as it is live."""

    def __init__(self, ledger: LedgerQueries | None) -> None:
        self.ledger = ledger

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        if self.ledger is None:
            return True, {"head": None}
        try:
            self.ledger.view.refresh()
            head = self.ledger.head()
            self.ledger.nonce(b"\x00" * 20)  # a state read at the head
        except LedgerNotReady as exc:
            return False, {"head": None, "reason": str(exc)}
        return True, {"head": head.block_number}


def _operator_routes(
    app: FastAPI,
    settings: Settings,
    checkpoints: CheckpointView | None,
    market: MarketService | None,
) -> None:
    # Pages and the Prometheus exposition are for browsers and scrapers, not API clients.
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        """The network dashboard: a page that reads this gateway's own API."""
        return HTMLResponse(DASHBOARD.read_text())

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus exposition of this process (gateway, market follower, archiver)."""
        if checkpoints is not None:
            REPLICA_DIVERGENCES.set(len(checkpoints.status()["divergences"]))
        if market is not None:
            market.observe()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    readiness: Readiness = app.state.readiness

    @app.get("/health", response_model_exclude_unset=True)
    async def health() -> Health:
        """Liveness (any answer) and readiness (`ready`: the ledger answers state reads;
        `reason` says why not yet)."""
        ready, detail = readiness()
        return Health(
            status="ok",
            live=True,
            ready=ready,
            **detail,
            chain_id=settings.chain_id,
            client=client_version(),
        )

    @app.get(
        "/ready",
        response_model=Ready,
        responses={503: {"model": Ready, "description": "not ready yet, and why"}},
    )
    async def ready() -> JSONResponse:
        """200 once the ledger answers state reads, 503 until then (for load balancers and
        scripts that must not send before the node can take a transaction)."""
        ok, detail = readiness()
        body = Ready(ready=ok, **detail).model_dump(exclude_unset=True)
        return JSONResponse(body, status_code=200 if ok else 503)


def close_followers(app: FastAPI) -> None:
    """Stop the followers `create_app` started (the network's pending transactions)."""
    for follower in getattr(app.state, "followers", []):
        follower.close()


def _network_routes(
    app: FastAPI, settings: Settings, rpc: JsonRpc | None, bootstrap: str | None
) -> None:
    @app.get("/start", response_class=HTMLResponse, include_in_schema=False)
    async def start() -> HTMLResponse:
        """The landing page: what the network is, its live figures, the API reference and
        the commands that join it."""
        return HTMLResponse(START.read_text())

    @app.get("/v1/network")
    async def network() -> Network:
        """What a new node or worker needs to join: the chain id and the Kafka bootstrap
        servers this gateway's node uses."""
        return Network(chain_id=settings.chain_id, kafka=bootstrap, client=client_version())

    @app.get("/v1/rpc-methods")
    async def rpc_methods() -> list[RpcMethod]:
        """The JSON-RPC methods this gateway serves, with the first line of each one's
        documentation (read from the code)."""
        if rpc is None:
            return []
        return [
            RpcMethod(name=name, doc=(inspect.getdoc(method) or "").split("\n")[0])
            for name, method in sorted(rpc.table.items())
        ]


class TarStream(StreamingResponse):
    media_type = "application/x-tar"


def _snapshot_route(app: FastAPI, store_dir: Path) -> None:
    @app.get(
        "/v1/snapshot",
        response_model=None,
        # A class without a media type: FastAPI then documents the error bodies as JSON,
        # and the 200 only as the tar stream declared here.
        response_class=Response,
        responses={
            200: {
                "description": "the snapshot's tar stream",
                "content": {TarStream.media_type: BINARY},
                "headers": {
                    "x-lattice-snapshot-block": {
                        "description": "the block the snapshot is of",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    }
                },
            },
            **errors(_404="no snapshot made yet"),
        },
    )
    async def snapshot() -> StreamingResponse | JSONResponse:
        """The newest state snapshot of this node's execution replica, as a tar stream
        (`lattice node --snapshot URL` starts from one); 404 before the first."""
        made = snapshots.finished(store_dir)
        if not made:
            message = "this node has made no state snapshot yet (see snapshot_every)"
            return JSONResponse({"error": {"code": "no_snapshot", "message": message}}, 404)
        newest = made[0]
        headers = {"x-lattice-snapshot-block": newest.name.lstrip("0") or "0"}
        return TarStream(snapshots.chunks(newest), headers=headers)


def _transaction_route(app: FastAPI, intake: TransactionIntake, body_limit: int) -> None:
    """`POST /v1/transactions`: a hex body is twice the bytes plus quoting; anything beyond
    `body_limit` is refused unread."""

    @app.post(
        "/v1/transactions",
        status_code=202,
        response_model=SubmittedTransaction,
        openapi_extra={"requestBody": RAW_TRANSACTION_BODY},
        responses=errors(
            _400="not a valid signed transaction (or, with a ledger, not one it can take)",
            _413="the body or the transaction is too large",
            _503="the broker did not take it",
        ),
    )
    async def submit_transaction(request: Request) -> SubmittedTransaction | JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > body_limit:
            return error(413, "oversize", f"request body over {body_limit} bytes")
        body = await request.body()
        if len(body) > body_limit:
            return error(413, "oversize", f"request body over {body_limit} bytes")
        try:
            raw = parse_hex(_raw_hex(body, request.headers.get("content-type", "")))
            tx, delivered = await intake.submit(raw, "rest")
        except InvalidTransaction as exc:
            return error(413 if exc.code == "oversize" else 400, exc.code, exc.message)
        except Unavailable as exc:
            return error(503, "unavailable", str(exc))
        return SubmittedTransaction.model_validate(
            {
                "hash": "0x" + tx.hash.hex(),
                "from": "0x" + tx.sender.hex(),
                "nonce": tx.nonce,
                "type": tx.tx_type,
                "topic": delivered.topic,
                "partition": delivered.partition,
                "offset": delivered.offset,
            }
        )
