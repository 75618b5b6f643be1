"""JSON-RPC over WebSocket, with `eth_subscribe` / `eth_unsubscribe`.

Every JSON-RPC method works over the socket. Subscriptions push
`{"method": "eth_subscription", "params": {"subscription", "result"}}` notifications:
`newHeads` (each executed block's header), `logs` (with the usual address/topics filter) and
`newPendingTransactions` (hashes this gateway accepted). A per-connection task checks for new
blocks every `poll_s` seconds; executed blocks arrive a few per second, so this keeps the
notification delay well under the block interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from gateway.chainview import LedgerNotReady
from gateway.rpc import LogCriteria, Rpc, RpcError, block_json, data, qty

SUBSCRIPTION_KINDS = ("newHeads", "logs", "newPendingTransactions")


class _Subscription:
    def __init__(self, kind: str, criteria: LogCriteria | None, cursor: int) -> None:
        self.kind = kind
        self.criteria = criteria
        self.cursor = cursor


async def serve(socket: WebSocket, rpc: Rpc, refresh: Any, poll_s: float = 0.05) -> None:
    await socket.accept()
    subscriptions: dict[str, _Subscription] = {}
    ids = itertools.count(1)
    lock = asyncio.Lock()

    async def send(message: Any) -> None:
        async with lock:
            await socket.send_text(json.dumps(message))

    async def pump() -> None:
        while True:
            await asyncio.sleep(poll_s)
            if not subscriptions:
                continue
            refresh()
            try:
                head = rpc.view.head().block_number
            except LedgerNotReady:
                continue
            for ident, sub in list(subscriptions.items()):
                for result in _new_results(rpc, sub, head):
                    await send(
                        {
                            "jsonrpc": "2.0",
                            "method": "eth_subscription",
                            "params": {"subscription": ident, "result": result},
                        }
                    )

    pumping = asyncio.create_task(pump())
    try:
        while True:
            text = await socket.receive_text()
            try:
                request = json.loads(text)
            except ValueError:
                await send(
                    {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {"code": -32700, "message": "parse error"},
                    }
                )
                continue
            method = request.get("method") if isinstance(request, dict) else None
            if method == "eth_subscribe":
                await send(_subscribe(request, rpc, subscriptions, ids))
            elif method == "eth_unsubscribe":
                params = request.get("params") or [None]
                found = subscriptions.pop(params[0], None) is not None
                await send({"jsonrpc": "2.0", "id": request.get("id"), "result": found})
            else:
                refresh()
                answer = await rpc.handle(text.encode())
                if answer is not None:
                    await send(answer)
    except WebSocketDisconnect:
        pass
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping


def _subscribe(
    request: dict[str, Any], rpc: Rpc, subscriptions: dict[str, _Subscription], ids: Any
) -> dict[str, Any]:
    ident = request.get("id")
    params = request.get("params") or []
    kind = params[0] if params else None
    try:
        if kind not in SUBSCRIPTION_KINDS:
            raise RpcError(
                -32602, f"unknown subscription {kind!r}; one of {', '.join(SUBSCRIPTION_KINDS)}"
            )
        criteria = LogCriteria(params[1] if len(params) > 1 else {}) if kind == "logs" else None
        if kind == "newPendingTransactions":
            cursor = len(rpc.accepted)
        else:
            cursor = rpc.view.head().block_number + 1
    except RpcError as exc:
        return {"jsonrpc": "2.0", "id": ident, "error": {"code": exc.code, "message": exc.message}}
    except LedgerNotReady as exc:
        return {"jsonrpc": "2.0", "id": ident, "error": {"code": -32000, "message": str(exc)}}
    subscription_id = qty(next(ids) << 64 | id(subscriptions) & 0xFFFFFFFF)
    subscriptions[subscription_id] = _Subscription(kind, criteria, cursor)
    return {"jsonrpc": "2.0", "id": ident, "result": subscription_id}


def _new_results(rpc: Rpc, sub: _Subscription, head: int) -> list[Any]:
    if sub.kind == "newPendingTransactions":
        new = rpc.accepted[sub.cursor :]
        sub.cursor = len(rpc.accepted)
        return [data(h) for h in new]
    first, sub.cursor = sub.cursor, max(sub.cursor, head + 1)
    if first > head:
        return []
    if sub.kind == "newHeads":
        out = []
        for number in range(first, head + 1):
            block = block_json(rpc.view.block(number), False)
            del block["transactions"], block["uncles"]
            out.append(block)
        return out
    assert sub.criteria is not None
    return rpc.logs(sub.criteria, first, head)
