"""The gateway's outermost ASGI layer: request body limits on every HTTP request, and the
per-client limits (`gateway.limits`) on the routes that ask for them.

A body is refused (413) from its `Content-Length` before a byte of it is read, and a body
sent without one (chunked) is read only up to the limit: what passes is handed on whole,
so a route's `await request.body()` never holds more than its limit. A client over its
rate or concurrency gets 429 with `Retry-After` (whole seconds) before its body is read.
Refusals carry the JSON shape of the route refused: a JSON-RPC error document on `POST /`
(code -32005, as EIP-1474 names "limit exceeded"; geth also answers 413), the market's
`{"error": {"code", "message", "type"}}` elsewhere; any origin may read them (CORS).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.limits import Limiter, Refusal, client_of


@dataclass(frozen=True)
class GuardRules:
    """Which body limit a path has (0: none), and whether a request is limited per
    client (by method and path)."""

    body_limit: Callable[[str], int]
    limited: Callable[[str, str], bool]


class Guard:
    def __init__(self, app: ASGIApp, rules: GuardRules, limiter: Limiter) -> None:
        self.app = app
        self.rules = rules
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.rules.body_limit(path)
        declared = _header(scope, b"content-length")
        if limit and declared.isascii() and declared.isdigit() and int(declared) > limit:
            await _too_large(path, limit, send)
            return
        client = None
        if self.rules.limited(scope["method"], path):
            address = scope["client"][0] if scope.get("client") else None
            client = client_of(_header(scope, b"authorization"), address)
            refusal = self.limiter.admit(client)
            if refusal is not None:
                await _too_many(path, refusal, send)
                return
        try:
            body = await _read(receive, limit)
            if body is None:
                await _too_large(path, limit, send)
                return
            await self.app(scope, _replay(body, receive), send)
        except _Disconnected:
            pass
        finally:
            if client is not None:
                self.limiter.release(client)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class _Disconnected(Exception):
    """The client went away before its body was read: nobody to answer."""


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is over `limit` (0: no limit)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit and size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` that gives the body read already, then whatever follows (a disconnect,
    which a streaming response waits for)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def _too_large(path: str, limit: int, send: Send) -> None:
    message = f"request body over {limit} bytes"
    await _answer(send, 413, _body(path, "too_large", message), [])


async def _too_many(path: str, refusal: Refusal, send: Send) -> None:
    code = "rate_limit_exceeded" if refusal.reason == "rate" else "too_many_requests"
    headers = [(b"retry-after", str(refusal.retry_after_s).encode())]
    await _answer(send, 429, _body(path, code, refusal.message), headers)


def _body(path: str, code: str, message: str) -> dict[str, Any]:
    if path == "/":
        return {"jsonrpc": "2.0", "id": None, "error": {"code": -32005, "message": message}}
    return {"error": {"code": code, "message": message, "type": code}}


async def _answer(
    send: Send, status: int, document: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps(document).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"access-control-allow-origin", b"*"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
