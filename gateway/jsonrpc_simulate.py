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


class SimulateMethods:
    def __init__(self, ledger: LedgerQueries) -> None:
        self.ledger = ledger

    def eth_simulateV1(self, params: list[Any]) -> list[dict[str, Any]]:
        payload = param(params, 0, "simulation")
        if not isinstance(payload, dict) or not isinstance(payload.get("blockStateCalls"), list):
            raise BadParam("simulation: expected an object with a blockStateCalls list")
        blocks = [_block(spec) for spec in payload["blockStateCalls"]]
        base = self.ledger.header(block_ref(param(params, 1, "block", "latest")))
        rules = ChainRules(self.ledger.view.chain_id, block_gas_limit=self.ledger.block_gas_limit)
        chain = self.ledger.view.scratch_ledger(rules).chain
        try:
            simulated = simulate(chain, base, blocks, bool(payload.get("validation", False)))
        except SimulationError as exc:
            raise RpcError(exc.code, exc.message) from None
        out = []
        for block in simulated:
            h = block.header
            hashes = [call.hash for call in block.calls]
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
                    "transactions": [data(x) for x in hashes],
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
