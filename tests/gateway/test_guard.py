"""The limits a public gateway enforces, against the real app over a real executed ledger:
per-key rate and concurrency on the market and OpenAI routes (429, `Retry-After`), body
limits (413, unread beyond the limit), WebSocket subscriptions and connections, and the
log query limits (-32005). The limits are made small through the settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from eth._utils.address import generate_contract_address
from eth_account import Account
from eth_typing import Address
from eth_utils.address import to_checksum_address
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gateway.app import create_app
from gateway.chainview import ChainView
from gateway.market import FOLLOWED, MarketService
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.settings import CHAIN_ID, Settings
from tests.gateway.test_chainview import KEY0, Execution
from tests.gateway.test_jsonrpc_fuzz import AcceptingSink

#: Runtime code that emits one LOG0 whenever called; its init code copies it.
_EMITS = "60006000a000"
DEPLOY_EMITTER = "6006600c60003960066000f3" + _EMITS
#: Well-formed API keys no account authorised (the routes answer them 401).
KEY_A, KEY_B = "lk_" + "11" * 32, "lk_" + "22" * 32
LIMITS = Settings(
    rate_limit=1.0,
    rate_burst=2,
    max_concurrent=1,
    max_body_bytes=1000,
    max_content_bytes=3000,
    max_subscriptions=2,
    max_ws_connections=1,
    max_log_range=3,
    max_log_results=2,
)


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChainView]:
    """Blocks 2 to 5 each hold one log (a call to the contract block 1 deployed)."""
    store: Path = tmp_path_factory.mktemp("limits") / "store"
    execution = Execution(store)
    execution.block(1, data="0x" + DEPLOY_EMITTER)
    sender = Address(bytes.fromhex(Account.from_key(KEY0).address[2:]))
    emitter = to_checksum_address(generate_contract_address(sender, 0))
    for n in range(2, 6):
        execution.block(n, to=emitter)
    chain = ChainView(store, CHAIN_ID)
    yield chain
    chain.close()
    execution.state.close()


@pytest.fixture
def rpc(view: ChainView) -> Iterator[TestClient]:
    with TestClient(create_app(LIMITS, AcceptingSink(), view)) as client:
        yield client


@pytest.fixture
def market_app(view: ChainView, broker: EmbeddedBroker, tmp_path: Path) -> Iterator[FastAPI]:
    ensure_topics(broker.bootstrap, FOLLOWED)
    settings = LIMITS.replace(data_dir=tmp_path)
    market = MarketService(settings, broker.bootstrap, CHAIN_ID)
    yield create_app(settings, AcceptingSink(), view, market=market)
    market.close()


def call(client: TestClient, method: str, *params: Any) -> dict[str, Any]:
    response = client.post(
        "/", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- eth_getLogs and log filters -------------------------------------------------------------


def test_log_queries_over_the_range_or_result_limit_are_refused_with_32005(
    rpc: TestClient,
) -> None:
    found = call(rpc, "eth_getLogs", {"fromBlock": "0x2", "toBlock": "0x3"})["result"]
    assert [entry["blockNumber"] for entry in found] == ["0x2", "0x3"]
    wide = call(rpc, "eth_getLogs", {"fromBlock": "0x1", "toBlock": "0x5"})["error"]
    assert wide == {
        "code": -32005,
        "message": "block range too large: 5 blocks, the limit is 3",
    }
    many = call(rpc, "eth_getLogs", {"fromBlock": "0x2", "toBlock": "0x4"})["error"]
    assert many["code"] == -32005
    assert many["message"].startswith("query returned more than 2 results")
    ident = call(rpc, "eth_newFilter", {"fromBlock": "0x1"})["result"]
    assert call(rpc, "eth_getFilterLogs", ident)["error"]["code"] == -32005
    narrow = call(rpc, "eth_newFilter", {"fromBlock": "0x4"})["result"]
    assert len(call(rpc, "eth_getFilterLogs", narrow)["result"]) == 2


# -- request bodies --------------------------------------------------------------------------


def test_a_json_rpc_body_over_the_limit_is_413_with_a_json_rpc_error(rpc: TestClient) -> None:
    request = b'{"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}'
    assert rpc.post("/", content=request.ljust(1000)).json()["result"] == hex(CHAIN_ID)
    response = rpc.post("/", content=request.ljust(1001))
    assert response.status_code == 413
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32005, "message": "request body over 1000 bytes"},
    }
    assert response.headers["access-control-allow-origin"] == "*"


async def _chunks(count: int, size: int, sent: list[int]) -> AsyncIterator[bytes]:
    for _ in range(count):
        sent.append(size)
        yield b" " * size


@pytest.mark.broker
def test_market_bodies_over_the_limit_are_413_and_not_read_past_it(market_app: FastAPI) -> None:
    async def run() -> None:
        transport = httpx.ASGITransport(market_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            declared = await client.post("/v1/jobs", content=b"x" * 1001)
            assert declared.status_code == 413
            error = declared.json()["error"]
            assert error["code"] == error["type"] == "too_large"
            assert error["message"] == "request body over 1000 bytes"
            # Chunked (no Content-Length): refused once past the limit, the rest unread.
            sent: list[int] = []
            streamed = await client.post("/v1/jobs", content=_chunks(1000, 400, sent))
            assert streamed.status_code == 413 and sum(sent) <= 1200
            # Content blocks have their own, larger limit.
            block = await client.post("/v1/content", content=b"b" * 3000)
            assert block.status_code == 201, block.text
            assert (await client.post("/v1/content", content=b"b" * 3001)).status_code == 413

    asyncio.run(run())


# -- per-key rate and concurrency ------------------------------------------------------------


@pytest.mark.broker
def test_a_key_over_its_rate_gets_429_with_retry_after(market_app: FastAPI) -> None:
    with TestClient(market_app) as client:
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(2):  # the burst: through to the route, which refuses the key
            response = client.post("/v1/chat/completions", json=chat, headers=bearer(KEY_A))
            assert response.status_code == 401, response.text
        over = client.post("/v1/chat/completions", json=chat, headers=bearer(KEY_A))
        assert over.status_code == 429
        assert over.headers["retry-after"] == "1"
        error = over.json()["error"]
        assert error["code"] == error["type"] == "rate_limit_exceeded"
        assert "1 requests/s" in error["message"]
        # What the openai client makes of it.
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(
                base_url="http://testserver/v1", api_key=KEY_A, http_client=client, max_retries=0
            ).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        # Another key has its own bucket; a request without a key counts against its address.
        other = client.post("/v1/chat/completions", json=chat, headers=bearer(KEY_B))
        assert other.status_code == 401
        statuses = [client.get("/v1/nodes").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        # Content reads by CID are not limited (workers fetch a model's blocks by the
        # thousand), nor is JSON-RPC.
        assert all(client.get("/ipfs/bafkqaaa").status_code != 429 for _ in range(5))


@pytest.mark.broker
def test_a_key_over_its_concurrency_gets_429_until_its_request_is_answered(
    market_app: FastAPI,
) -> None:
    async def run() -> None:
        transport = httpx.ASGITransport(market_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            release = asyncio.Event()

            async def slow_body() -> AsyncIterator[bytes]:
                yield b'{"model": "m", '
                await release.wait()
                yield b'"input": {}}'

            held = asyncio.create_task(
                client.post(
                    "/v1/jobs",
                    content=slow_body(),
                    headers={**bearer(KEY_A), "content-type": "application/json"},
                )
            )
            await asyncio.sleep(0.2)  # the first request is in flight, its body half sent
            over = await client.post("/v1/jobs", json={"model": "m"}, headers=bearer(KEY_A))
            assert over.status_code == 429 and over.headers["retry-after"] == "1"
            assert over.json()["error"]["code"] == "too_many_requests"
            other = await client.post("/v1/jobs", json={"model": "m"}, headers=bearer(KEY_B))
            assert other.status_code == 401
            release.set()
            assert (await held).status_code == 401
            again = await client.post("/v1/jobs", json={"model": "m"}, headers=bearer(KEY_A))
            assert again.status_code == 401  # the burst's second token, kept through the 429

    asyncio.run(run())


# -- WebSocket -------------------------------------------------------------------------------


def test_subscriptions_beyond_the_limit_are_refused_and_the_connection_stays(
    rpc: TestClient,
) -> None:
    with rpc.websocket_connect("/") as socket:
        for n in range(3):
            socket.send_json(
                {"jsonrpc": "2.0", "id": n, "method": "eth_subscribe", "params": ["newHeads"]}
            )
            answer = socket.receive_json()
            if n < 2:
                assert answer["result"].startswith("0x")
        assert answer["error"] == {
            "code": -32005,
            "message": "more than 2 subscriptions on one connection",
        }
        socket.send_json({"jsonrpc": "2.0", "id": 9, "method": "eth_blockNumber", "params": []})
        assert socket.receive_json() == {"jsonrpc": "2.0", "id": 9, "result": "0x5"}


def test_connections_beyond_the_limit_per_address_are_closed(rpc: TestClient) -> None:
    with rpc.websocket_connect("/") as first:
        with rpc.websocket_connect("/") as second, pytest.raises(WebSocketDisconnect) as closed:
            second.receive_json()
        assert closed.value.code == 1013
        first.send_json({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
        assert first.receive_json()["result"] == hex(CHAIN_ID)
    with rpc.websocket_connect("/") as again:  # the first one's slot is free again
        again.send_json({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
        assert again.receive_json()["result"] == hex(CHAIN_ID)
