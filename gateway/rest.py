"""REST mirrors of the ledger reads under `/v1`: the same answers as the JSON-RPC methods
(one implementation, `gateway.rpc`), as plain resources.

    GET /v1/blocks/{number | hash | latest | earliest | finalized}?full=true
    GET /v1/blocks/{id}/receipts
    GET /v1/transactions/{hash}
    GET /v1/receipts/{hash}
    GET /v1/accounts/{address}

Errors are `{"error": {"code", "message"}}` with 400 for malformed ids and 404 for unknown ones.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from gateway.chainview import LedgerNotReady
from gateway.rpc import Rpc, RpcError

TAGS = ("latest", "earliest", "pending", "safe", "finalized")


def _fail(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _ask(call: Any, *params: Any) -> Any:
    try:
        result = call(list(params))
    except RpcError as exc:
        if exc.code == -32602:
            return _fail(400, "bad_request", exc.message)
        return _fail(404, "not_found", exc.message)
    except LedgerNotReady as exc:
        return _fail(503, "unavailable", str(exc))
    if result is None:
        return _fail(404, "not_found", "no such item")
    return result


def _block_param(block_id: str) -> Any:
    if block_id in TAGS or (block_id.startswith("0x") and len(block_id) != 66):
        return block_id
    if block_id.isdigit():
        return hex(int(block_id))
    return block_id


def router(rpc: Rpc) -> APIRouter:
    # Handlers are coroutines, so they run on the event loop like JSON-RPC calls: FastAPI
    # runs plain functions on a thread pool, where they would share py-evm's state and the
    # view's caches with the loop's calls unguarded.
    api = APIRouter(prefix="/v1")

    @api.get("/blocks/{block_id}", response_model=None)
    async def block(block_id: str, full: bool = False) -> Any:
        if block_id.startswith("0x") and len(block_id) == 66:
            return _ask(rpc.rpc_eth_getBlockByHash, block_id, full)
        return _ask(rpc.rpc_eth_getBlockByNumber, _block_param(block_id), full)

    @api.get("/blocks/{block_id}/receipts", response_model=None)
    async def block_receipts(block_id: str) -> Any:
        if block_id.startswith("0x") and len(block_id) == 66:
            return _ask(rpc.rpc_eth_getBlockReceipts, {"blockHash": block_id})
        return _ask(rpc.rpc_eth_getBlockReceipts, _block_param(block_id))

    @api.get("/transactions/{tx_hash}", response_model=None)
    async def transaction(tx_hash: str) -> Any:
        return _ask(rpc.rpc_eth_getTransactionByHash, tx_hash)

    @api.get("/receipts/{tx_hash}", response_model=None)
    async def receipt(tx_hash: str) -> Any:
        return _ask(rpc.rpc_eth_getTransactionReceipt, tx_hash)

    @api.get("/accounts/{address}", response_model=None)
    async def account(address: str) -> Any:
        balance = _ask(rpc.rpc_eth_getBalance, address, "latest")
        if isinstance(balance, JSONResponse):
            return balance
        nonce = rpc.rpc_eth_getTransactionCount([address, "latest"])
        code = rpc.rpc_eth_getCode([address, "latest"])
        return {
            "address": address.lower(),
            "balance": str(int(balance, 16)),
            "nonce": int(nonce, 16),
            "code_size": (len(code) - 2) // 2,
            "block_number": int(rpc.rpc_eth_blockNumber([]), 16),
        }

    return api
