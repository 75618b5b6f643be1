"""REST mirrors of the ledger reads under `/v1`: the same answers as the JSON-RPC methods
(the same typed queries, `gateway.ledger`, and the same shapes, `gateway.formats`), as plain
resources.

    GET /v1/blocks/{number | hash | latest | earliest | finalized}?full=true
    GET /v1/blocks/{id}/receipts
    GET /v1/transactions/{hash}
    GET /v1/receipts/{hash}
    GET /v1/accounts/{address}

Errors are `{"error": {"code", "message"}}` with 400 for malformed ids, 404 for unknown ones
and 503 before the ledger has a genesis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.chainview import LedgerNotReady
from gateway.filters import block_ref
from gateway.formats import BadParam, block_json, parse_data, receipt_json, transaction_json
from gateway.ledger import BlockRef, LedgerQueries, QueryError


def _fail(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _answer(query: Callable[[], Any]) -> Any:
    """The query's JSON, or the error response its failure means."""
    try:
        result = query()
    except BadParam as exc:
        return _fail(400, "bad_request", str(exc))
    except QueryError as exc:
        if exc.kind == "bad_request":
            return _fail(400, "bad_request", exc.message)
        return _fail(404, "not_found", exc.message)
    except LedgerNotReady as exc:
        return _fail(503, "unavailable", str(exc))
    if result is None:
        return _fail(404, "not_found", "no such item")
    return result


def _block_id(block_id: str) -> BlockRef:
    """A block by tag, decimal or 0x number, or 32-byte hash."""
    if block_id.isdigit():
        return int(block_id)
    if block_id.startswith("0x") and len(block_id) == 66:
        return parse_data(block_id, "block hash", 32)
    return block_ref(block_id)


def router(ledger: LedgerQueries) -> APIRouter:
    # Handlers are coroutines, so they run on the event loop like JSON-RPC calls: FastAPI
    # runs plain functions on a thread pool, where they would share py-evm's state and the
    # view's caches with the loop's calls unguarded.
    api = APIRouter(prefix="/v1")

    def block(block_id: str, full: bool) -> dict[str, Any]:
        found = ledger.block(_block_id(block_id))
        return block_json(found, full, ledger.block_size(found))

    @api.get("/blocks/{block_id}", response_model=None)
    async def get_block(block_id: str, full: bool = False) -> Any:
        return _answer(lambda: block(block_id, full))

    @api.get("/blocks/{block_id}/receipts", response_model=None)
    async def block_receipts(block_id: str) -> Any:
        def receipts() -> list[dict[str, Any]]:
            found = ledger.block(_block_id(block_id))
            return [receipt_json(r) for r in ledger.receipts(found)]

        return _answer(receipts)

    @api.get("/transactions/{tx_hash}", response_model=None)
    async def transaction(tx_hash: str) -> Any:
        def lookup() -> dict[str, Any] | None:
            found = ledger.locate(parse_data(tx_hash, "hash", 32))
            return None if found is None else transaction_json(*found)

        return _answer(lookup)

    @api.get("/receipts/{tx_hash}", response_model=None)
    async def receipt(tx_hash: str) -> Any:
        def lookup() -> dict[str, Any] | None:
            found = ledger.receipt(parse_data(tx_hash, "hash", 32))
            return None if found is None else receipt_json(found)

        return _answer(lookup)

    @api.get("/accounts/{address}", response_model=None)
    async def account(address: str) -> Any:
        def lookup() -> dict[str, Any]:
            who = parse_data(address, "address", 20)
            return {
                "address": address.lower(),
                "balance": str(ledger.balance(who)),
                "nonce": ledger.nonce(who),
                "code_size": len(ledger.code(who)),
                "block_number": ledger.head().block_number,
            }

        return _answer(lookup)

    return api
