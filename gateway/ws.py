"""JSON-RPC over WebSocket, with `eth_subscribe` / `eth_unsubscribe`.

Every JSON-RPC method works over the socket. Subscriptions push
`{"method": "eth_subscription", "params": {"subscription", "result"}}` notifications:
`newHeads` (each executed block's header), `logs` (with the usual address/topics filter) and
`newPendingTransactions` (hashes this gateway accepted). A subscription is a watch from
now (`gateway.filters`); a per-connection task checks for news every `poll_s` seconds;
executed blocks arrive a few per second, so this keeps the notification delay well under
the block interval.

Limits: a connection holds at most `max_subscriptions` (beyond, `eth_subscribe` answers
-32005 and the connection stays); a client address holds at most its `connections` slots
(beyond, the socket is closed at once with 1013, "try again later"). A subscription's
news is never cut by the log query limits: it covers the blocks since the last poll,
which no client could narrow.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from gateway.chainview import LedgerNotReady
from gateway.filters import Changes, Watch, criteria_of
from gateway.formats import BadParam, block_json, changed_logs, data
from gateway.jsonrpc import JsonRpc, RpcError, error
from gateway.limits import Slots, client_of

SUBSCRIPTION_KINDS = {"newHeads": "blocks", "logs": "logs", "newPendingTransactions": "pending"}


async def serve(
    socket: WebSocket,
    rpc: JsonRpc,
    refresh: Callable[[], object],
    *,
    max_subscriptions: int = 0,
    connections: Slots | None = None,
    poll_s: float = 0.05,
) -> None:
    """Serve one connection (`max_subscriptions`, `connections`: 0 or None, no limit)."""
    await socket.accept()
    address = client_of("", socket.client.host if socket.client else None)
    if connections is not None and not connections.take(address):
        reason = f"more than {connections.limit} connections from this address"
        await socket.close(code=1013, reason=reason)
        return
    try:
        await _serve(socket, rpc, refresh, max_subscriptions, poll_s)
    finally:
        if connections is not None:
            connections.give(address)


async def _serve(
    socket: WebSocket,
    rpc: JsonRpc,
    refresh: Callable[[], object],
    max_subscriptions: int,
    poll_s: float,
) -> None:
    subscriptions: dict[str, Watch] = {}
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
            for ident, watch in list(subscriptions.items()):
                try:
                    results = _results(rpc, rpc.methods.watcher.changes(watch, limited=False))
                except LedgerNotReady:
                    break
                for result in results:
                    params = {"subscription": ident, "result": result}
                    await send({"jsonrpc": "2.0", "method": "eth_subscription", "params": params})

    pumping = asyncio.create_task(pump())
    try:
        while True:
            text = await socket.receive_text()
            try:
                request = json.loads(text)
            except ValueError:
                await send(error(None, RpcError(-32700, "parse error")))
                continue
            method = request.get("method") if isinstance(request, dict) else None
            if method == "eth_subscribe" and 0 < max_subscriptions <= len(subscriptions):
                message = f"more than {max_subscriptions} subscriptions on one connection"
                await send(error(request.get("id"), RpcError(-32005, message)))
            elif method == "eth_subscribe":
                await send(_subscribe(request, rpc, subscriptions, next(ids)))
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
    request: dict[str, Any], rpc: JsonRpc, subscriptions: dict[str, Watch], number: int
) -> dict[str, Any]:
    ident = request.get("id")
    params = request.get("params") or []
    name = params[0] if params else None
    try:
        kind = SUBSCRIPTION_KINDS.get(name) if isinstance(name, str) else None
        if kind is None:
            known = ", ".join(SUBSCRIPTION_KINDS)
            raise RpcError(-32602, f"unknown subscription {name!r}; one of {known}")
        criteria = criteria_of(params[1] if len(params) > 1 else {}) if kind == "logs" else None
        watch = rpc.methods.watcher.watch(kind, criteria, from_now=True)  # type: ignore[arg-type]
    except BadParam as exc:
        return error(ident, RpcError(-32602, str(exc)))
    except RpcError as exc:
        return error(ident, exc)
    except LedgerNotReady as exc:
        return error(ident, RpcError(-32000, str(exc)))
    subscription_id = hex(number << 64 | id(subscriptions) & 0xFFFFFFFF)
    subscriptions[subscription_id] = watch
    return {"jsonrpc": "2.0", "id": ident, "result": subscription_id}


def _results(rpc: JsonRpc, changes: Changes) -> list[Any]:
    if changes.pending:
        return [data(h) for h in changes.pending]
    if changes.logs or changes.removed:
        return changed_logs(changes.removed, changes.logs)
    ledger = rpc.methods.ledger
    out = []
    for number in changes.blocks:
        block = ledger.block(number)
        head = block_json(block, False, ledger.block_size(block))
        del head["transactions"], head["uncles"]
        out.append(head)
    return out
