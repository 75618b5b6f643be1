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
from gateway.models import (
    Account,
    AddressPath,
    Block,
    BlockId,
    Receipt,
    Transaction,
    TxHash,
    errors,
)

#: What any lookup may answer instead (a malformed id, an unknown one, no genesis yet).
LOOKUP_ERRORS = errors(
    _400="a malformed id", _404="no such item", _503="the ledger has no genesis yet"
)


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
    if block_id.isascii() and block_id.isdigit():  # not "²", a digit int() refuses
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

    # The routes answer `gateway.formats`' dictionaries, as JSON-RPC does; FastAPI checks
    # them against the models (keys the wire leaves out stay out: exclude_unset).
    shapes: dict[str, Any] = {"responses": LOOKUP_ERRORS, "response_model_exclude_unset": True}

    @api.get("/blocks/{block_id}", response_model=Block, **shapes)
    async def get_block(block_id: BlockId, full: bool = False) -> Any:
        """A block by tag (latest, earliest, finalized, ...), decimal or 0x number, or
        hash; `full`: with its transactions rather than their hashes."""
        return _answer(lambda: block(block_id, full))

    @api.get("/blocks/{block_id}/receipts", response_model=list[Receipt], **shapes)
    async def block_receipts(block_id: BlockId) -> Any:
        """The receipts of a block's transactions, in block order."""

        def receipts() -> list[dict[str, Any]]:
            found = ledger.block(_block_id(block_id))
            return [receipt_json(r) for r in ledger.receipts(found)]

        return _answer(receipts)

    @api.get("/transactions/{tx_hash}", response_model=Transaction, **shapes)
    async def transaction(tx_hash: TxHash) -> Any:
        """An executed transaction, with the block it is in."""

        def lookup() -> dict[str, Any] | None:
            found = ledger.locate(parse_data(tx_hash, "hash", 32))
            return None if found is None else transaction_json(*found)

        return _answer(lookup)

    @api.get("/receipts/{tx_hash}", response_model=Receipt, **shapes)
    async def receipt(tx_hash: TxHash) -> Any:
        """An executed transaction's receipt."""

        def lookup() -> dict[str, Any] | None:
            found = ledger.receipt(parse_data(tx_hash, "hash", 32))
            return None if found is None else receipt_json(found)

        return _answer(lookup)

    @api.get("/accounts/{address}", response_model=Account, **shapes)
    async def account(address: AddressPath) -> Any:
        """An account at the head: balance (wei), nonce, code size."""

        def lookup() -> Account:
            who = parse_data(address, "address", 20)
            return Account(
                address="0x" + who.hex(),
                balance=str(ledger.balance(who)),
                nonce=ledger.nonce(who),
                code_size=len(ledger.code(who)),
                block_number=ledger.head().block_number,
            )

        return _answer(lookup)

    return api
