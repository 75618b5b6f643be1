"""`eth_simulateV1` over `gateway.simulation`: the request's blocks and calls parsed,
each simulated block answered as a block with its calls' results."""

from __future__ import annotations

from typing import Any

from eth.exceptions import Revert

from gateway.filters import block_ref
from gateway.formats import BadParam, address, data, parse_data, parse_qty, qty
from gateway.jsonrpc import RpcError, overrides_of, param
from gateway.ledger import LedgerQueries, revert_reason
from gateway.simulation import CallResult, SimBlock, SimCall, SimulationError, simulate
from processors.execution.transactions import ChainRules

#: What a request, a block's overrides and a call may hold: anything else would change the
#: answer if applied, so it is refused by name rather than ignored.
REQUEST_KEYS = {"blockStateCalls", "validation", "traceTransfers", "returnFullTransactions"}
BLOCK_OVERRIDES = {"number", "time", "gasLimit", "feeRecipient", "baseFeePerGas"}
UNSUPPORTED_CALL_KEYS = {"accessList", "authorizationList", "blobVersionedHashes"}


def _refuse_unknown(given: Any, known: set[str], what: str) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        raise BadParam(
            f"{what}: {', '.join(unknown)} not supported (known: {', '.join(sorted(known))})"
        )


class SimulateMethods:
    def __init__(self, ledger: LedgerQueries) -> None:
        self.ledger = ledger

    def eth_simulateV1(self, params: list[Any]) -> list[dict[str, Any]]:
        payload = param(params, 0, "simulation")
        if not isinstance(payload, dict) or not isinstance(payload.get("blockStateCalls"), list):
            raise BadParam("simulation: expected an object with a blockStateCalls list")
        _refuse_unknown(payload, REQUEST_KEYS, "simulation")
        blocks = [_block(spec) for spec in payload["blockStateCalls"]]
        base = self.ledger.header(block_ref(param(params, 1, "block", "latest")))
        rules = ChainRules(self.ledger.view.chain_id, block_gas_limit=self.ledger.block_gas_limit)
        chain = self.ledger.view.scratch_ledger(rules).chain
        validation = bool(payload.get("validation", False))
        transfers = bool(payload.get("traceTransfers", False))
        try:
            simulated = simulate(chain, base, blocks, validation, transfers)
        except SimulationError as exc:
            raise RpcError(exc.code, exc.message) from None
        full = bool(payload.get("returnFullTransactions", False))
        out = []
        for block in simulated:
            h = block.header
            chain_id = self.ledger.view.chain_id
            transactions: list[Any] = [
                _transaction_json(c, h, i, chain_id) if full else data(c.hash)
                for i, c in enumerate(block.calls)
            ]
            out.append(
                {
                    "number": qty(h.block_number),
                    "hash": data(h.hash),
                    "parentHash": data(h.parent_hash),
                    "timestamp": qty(h.timestamp),
                    "gasLimit": qty(h.gas_limit),
                    "gasUsed": qty(h.gas_used),
                    "miner": address(h.coinbase),
                    "baseFeePerGas": qty(h.base_fee_per_gas or 0),
                    "stateRoot": data(h.state_root),
                    "logsBloom": data(h.bloom.to_bytes(256, "big")),
                    "transactions": transactions,
                    "calls": [_call_json(c, h, i) for i, c in enumerate(block.calls)],
                }
            )
        return out


def _block(spec: Any) -> SimBlock:
    if not isinstance(spec, dict):
        raise BadParam("blockStateCalls: each entry must be an object")
    overrides = spec.get("blockOverrides") or {}
    if not isinstance(overrides, dict) or not isinstance(spec.get("calls", []), list):
        raise BadParam("blockStateCalls: blockOverrides must be an object, calls a list")
    _refuse_unknown(overrides, BLOCK_OVERRIDES, "blockOverrides")

    def number(key: str) -> int | None:
        return parse_qty(overrides[key], key) if overrides.get(key) is not None else None

    recipient = overrides.get("feeRecipient")
    return SimBlock(
        calls=tuple(_call(c) for c in spec.get("calls", [])),
        number=number("number"),
        time=number("time"),
        gas_limit=number("gasLimit"),
        fee_recipient=parse_data(recipient, "feeRecipient", 20) if recipient else None,
        base_fee=number("baseFeePerGas"),
        overrides=overrides_of(spec.get("stateOverrides")),
    )


def _call(spec: Any) -> SimCall:
    if not isinstance(spec, dict):
        raise BadParam("calls: each call must be an object")
    unsupported = sorted(k for k in UNSUPPORTED_CALL_KEYS if spec.get(k))
    if unsupported:
        raise BadParam(f"calls: {', '.join(unsupported)} not supported in simulated calls")

    def number(key: str) -> int | None:
        return parse_qty(spec[key], key) if spec.get(key) is not None else None

    payload = spec.get("input") or spec.get("data") or "0x"
    return SimCall(
        sender=parse_data(spec["from"], "from", 20) if spec.get("from") else bytes(20),
        to=parse_data(spec["to"], "to", 20) if spec.get("to") else None,
        gas=number("gas"),
        value=number("value") or 0,
        data=parse_data(payload, "input"),
        nonce=number("nonce"),
        gas_price=number("gasPrice") if spec.get("gasPrice") else number("maxFeePerGas"),
    )


def _transaction_json(result: CallResult, header: Any, index: int, chain_id: int) -> dict[str, Any]:
    """A simulated call as the transaction it ran as (`returnFullTransactions`): unsigned,
    so its signature fields are zero, as geth shows them."""
    tx = result.tx
    return {
        "type": "0x0",
        "chainId": qty(chain_id),
        "hash": data(result.hash),
        "blockHash": data(header.hash),
        "blockNumber": qty(header.block_number),
        "transactionIndex": qty(index),
        "from": address(tx.sender),
        "to": address(tx.to) if tx.to else None,
        "nonce": qty(tx.nonce),
        "gas": qty(tx.gas),
        "gasPrice": qty(tx.gas_price),
        "value": qty(tx.value),
        "input": data(tx.data),
        "v": "0x0",
        "r": "0x0",
        "s": "0x0",
    }


def _call_json(result: CallResult, header: Any, index: int) -> dict[str, Any]:
    logs = [
        {
            "address": address(entry_address),
            "topics": [data(t.to_bytes(32, "big")) for t in topics],
            "data": data(entry_data),
            "blockNumber": qty(header.block_number),
            "blockHash": data(header.hash),
            "transactionHash": data(result.hash),
            "transactionIndex": qty(index),
            "logIndex": qty(position),
            "removed": False,
        }
        for position, (entry_address, topics, entry_data) in enumerate(result.logs)
    ]
    out: dict[str, Any] = {
        "returnData": data(result.output),
        "logs": logs,
        "gasUsed": qty(result.gas_used),
        "status": qty(0 if result.error is not None else 1),
    }
    if isinstance(result.error, Revert):
        reason = "execution reverted" + revert_reason(result.output)
        out["error"] = {"code": 3, "message": reason, "data": data(result.output)}
    elif result.error is not None:
        out["error"] = {"code": -32015, "message": f"VM error: {result.error}"}
    return out
