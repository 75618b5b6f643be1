"""A small client of a gateway's JSON-RPC, for the market's participants: workers staking and
leaving, the CLI depositing, authorising keys and registering models (stdlib HTTP only)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from processors.execution.genesis import address_of
from processors.market.chain import signed_call


class RpcFailure(RuntimeError):
    """The gateway refused a call or could not be reached."""


def rpc_call(url: str, method: str, params: list[Any], timeout: float = 30) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise RpcFailure(f"{method} at {url}: {exc}") from None
    if "error" in answer:
        raise RpcFailure(f"{method}: {answer['error'].get('message')}")
    return answer["result"]


def wait_for_ledger(url: str, timeout: float = 120.0) -> None:
    """Wait until the gateway serves the ledger (execution has written its genesis)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            rpc_call(url, "eth_blockNumber", [], timeout=5)
            return
        except RpcFailure:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def send_call(
    url: str,
    chain_id: int,
    private_key: bytes,
    to: bytes,
    data: bytes,
    *,
    value: int = 0,
    gas: int = 300_000,
    wait_s: float | None = 60.0,
) -> tuple[str, dict[str, Any] | None]:
    """Sign and send a contract call; with `wait_s`, wait for its receipt and raise if it
    reverted. Returns the transaction hash and the receipt (None when not waiting)."""
    sender = "0x" + address_of(private_key).hex()
    wait_for_ledger(url)
    nonce = int(rpc_call(url, "eth_getTransactionCount", [sender, "pending"]), 16)
    raw = signed_call(private_key, chain_id, nonce, to, data, value=value, gas=gas)
    tx_hash = str(rpc_call(url, "eth_sendRawTransaction", ["0x" + raw.hex()]))
    if wait_s is None:
        return tx_hash, None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        receipt = rpc_call(url, "eth_getTransactionReceipt", [tx_hash])
        if receipt is not None:
            if receipt["status"] != "0x1":
                raise RpcFailure(f"transaction {tx_hash} reverted")
            return tx_hash, receipt
        time.sleep(0.2)
    raise RpcFailure(f"transaction {tx_hash} not executed within {wait_s:.0f}s")


#: How long a client waits out a gateway's 429 in all before giving up (seconds).
RATE_LIMITED_WAIT_S = 120.0
#: How long an idempotent POST whose connection was cut waits before it is sent again.
CUT_RETRY_S = 1.0
#: A connection cut by the other end while the request went out (not one refused: a
#: gateway that is down is not waited for).
CUT = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


def http_post(
    url: str,
    data: bytes,
    content_type: str = "application/octet-stream",
    headers: dict[str, str] | None = None,
    idempotent: bool = False,
) -> Any:
    """POST `data` and read the JSON answer. A 429 is waited out as its `Retry-After` asks
    (a model upload is hundreds of blocks: more than a public gateway's burst), for up to
    `RATE_LIMITED_WAIT_S` in all. An `idempotent` POST (a content block: its address is its
    bytes) is also sent again when the connection is cut while it is sent: a gateway over
    its limits answers before reading the body, and a client still sending a large one
    sees a broken pipe rather than the 429."""
    deadline = time.monotonic() + RATE_LIMITED_WAIT_S
    while True:
        request = urllib.request.Request(
            url, data, {"Content-Type": content_type, **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            wait = _retry_after(exc) if exc.code == 429 else None
            if wait is None or time.monotonic() + wait > deadline:
                raise RpcFailure(f"POST {url}: {exc.code} {detail}") from None
            time.sleep(wait)
        except OSError as exc:
            cut = isinstance(getattr(exc, "reason", exc), CUT)
            if not (idempotent and cut) or time.monotonic() + CUT_RETRY_S > deadline:
                raise RpcFailure(f"POST {url}: {exc}") from None
            time.sleep(CUT_RETRY_S)


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    """The seconds a 429's `Retry-After` asks for (1 when it names none; None when it
    names a date or nonsense: then the refusal stands)."""
    value = exc.headers.get("Retry-After", "1")
    try:
        return min(max(float(value), 0.05), 30.0)
    except ValueError:
        return None
