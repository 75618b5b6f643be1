"""The Ethereum JSON shapes of the ledger's objects (execution-apis), and their hex rules.

Quantities are minimal 0x-hex, data is 0x-hex of the bytes, an absent address is null. One
module for the shapes, so JSON-RPC, the REST mirrors and WebSocket notifications answer
alike. Parsing of request parameters is the other way round: `parse_qty`, `parse_data`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth.abc import BlockAPI

from processors.execution.receipts import BlockReceipt
from processors.execution.transactions import effective_gas_price


class BadParam(ValueError):
    """A request parameter that is not what it should be, with what was expected."""


def qty(n: int) -> str:
    return hex(n)


def data(b: bytes) -> str:
    return "0x" + b.hex()


def address(b: bytes | None) -> str | None:
    return None if not b else "0x" + b.hex()


def parse_qty(value: Any, what: str) -> int:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise BadParam(f"{what}: expected a 0x-hex quantity, got {value!r}")


def parse_data(value: Any, what: str, size: int | None = None) -> bytes:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            raw = bytes.fromhex(value[2:])
        except ValueError:
            raw = None
        if raw is not None and (size is None or len(raw) == size):
            return raw
    expected = f"{size} bytes of 0x-hex" if size else "0x-hex data"
    raise BadParam(f"{what}: expected {expected}, got {value!r}")


def transaction_json(block: BlockAPI, index: int) -> dict[str, Any]:
    """A transaction of an executed block, with where it is."""
    return _transaction_json(block.transactions[index], block.header, index)


def pending_transaction_json(tx: Any) -> dict[str, Any]:
    """A transaction no block holds yet (py-evm's decoding of it): `blockHash`,
    `blockNumber` and `transactionIndex` null, its gas price its fee cap (geth's)."""
    return _transaction_json(tx, None, None)


def _transaction_json(tx: Any, header: Any, index: int | None) -> dict[str, Any]:
    kind = getattr(tx, "type_id", None) or 0
    out: dict[str, Any] = {
        "blockHash": data(header.hash) if header is not None else None,
        "blockNumber": qty(header.block_number) if header is not None else None,
        "transactionIndex": qty(index) if index is not None else None,
        "hash": data(tx.hash),
        "from": address(bytes(tx.sender)),
        "to": address(tx.to),
        "nonce": qty(tx.nonce),
        "gas": qty(tx.gas),
        "value": qty(tx.value),
        "input": data(tx.data),
        "type": qty(kind),
        "chainId": qty(tx.chain_id) if tx.chain_id is not None else None,
        "v": qty(tx.v if kind == 0 else tx.y_parity),
        "r": qty(tx.r),
        "s": qty(tx.s),
    }
    if kind in (2, 4):
        out["maxFeePerGas"] = qty(tx.max_fee_per_gas)
        out["maxPriorityFeePerGas"] = qty(tx.max_priority_fee_per_gas)
        price = tx.max_fee_per_gas
        if header is not None:
            base = header.base_fee_per_gas or 0
            price = effective_gas_price(tx.max_fee_per_gas, tx.max_priority_fee_per_gas, base)
        out["gasPrice"] = qty(price)
        out["yParity"] = qty(tx.y_parity)
    else:
        out["gasPrice"] = qty(tx.gas_price)
    if kind in (1, 2, 4):
        out["accessList"] = [
            {"address": address(a), "storageKeys": [data(k.to_bytes(32, "big")) for k in keys]}
            for a, keys in tx.access_list
        ]
        out["yParity"] = qty(tx.y_parity)
    if kind == 4:
        out["authorizationList"] = [
            {
                "chainId": qty(a.chain_id),
                "address": address(a.address),
                "nonce": qty(a.nonce),
                "yParity": qty(a.y_parity),
                "r": qty(a.r),
                "s": qty(a.s),
            }
            for a in tx.authorization_list
        ]
    return out


def log_json(receipt: BlockReceipt, index: int, removed: bool = False) -> dict[str, Any]:
    """Log `index` of a receipt, with where it is (`removed`: its block was dropped by a
    reorganisation)."""
    entry = receipt.logs[index]
    return {
        "address": address(entry.address),
        "topics": [data(t) for t in entry.topics],
        "data": data(entry.data),
        "blockNumber": qty(receipt.block_number),
        "blockHash": data(receipt.block_hash),
        "transactionHash": data(receipt.transaction_hash),
        "transactionIndex": qty(receipt.transaction_index),
        "logIndex": qty(entry.log_index),
        "removed": removed,
    }


def changed_logs(
    removed: Sequence[tuple[BlockReceipt, int]], logs: Sequence[tuple[BlockReceipt, int]]
) -> list[dict[str, Any]]:
    """A log watch's news: the logs of dropped blocks as removed, then the new ones."""
    out = [log_json(receipt, i, removed=True) for receipt, i in removed]
    return out + [log_json(receipt, i) for receipt, i in logs]


def receipt_json(receipt: BlockReceipt) -> dict[str, Any]:
    return {
        "transactionHash": data(receipt.transaction_hash),
        "transactionIndex": qty(receipt.transaction_index),
        "blockHash": data(receipt.block_hash),
        "blockNumber": qty(receipt.block_number),
        "from": address(receipt.from_address),
        "to": address(receipt.to_address),
        "cumulativeGasUsed": qty(receipt.cumulative_gas_used),
        "gasUsed": qty(receipt.gas_used),
        "effectiveGasPrice": qty(receipt.effective_gas_price),
        "contractAddress": address(receipt.contract_address),
        "logs": [log_json(receipt, i) for i in range(len(receipt.logs))],
        "logsBloom": data(receipt.logs_bloom),
        "status": qty(receipt.status),
        "type": qty(receipt.tx_type),
    }


#: Header fields of later forks, shown when the header has them.
_LATER_FIELDS = (
    ("withdrawals_root", "withdrawalsRoot"),
    ("blob_gas_used", "blobGasUsed"),
    ("excess_blob_gas", "excessBlobGas"),
    ("parent_beacon_block_root", "parentBeaconBlockRoot"),
    ("requests_hash", "requestsHash"),
)


def block_json(block: BlockAPI, full: bool, size: int) -> dict[str, Any]:
    """A block; `full`: with its transactions rather than their hashes; `size`: its RLP
    size in bytes."""
    h = block.header
    out: dict[str, Any] = {
        "number": qty(h.block_number),
        "hash": data(h.hash),
        "parentHash": data(h.parent_hash),
        "nonce": data(h.nonce),
        "sha3Uncles": data(h.uncles_hash),
        "logsBloom": data(h.bloom.to_bytes(256, "big")),
        "transactionsRoot": data(h.transaction_root),
        "stateRoot": data(h.state_root),
        "receiptsRoot": data(h.receipt_root),
        "miner": address(h.coinbase),
        "difficulty": qty(h.difficulty),
        "totalDifficulty": qty(0),
        "extraData": data(h.extra_data),
        "size": qty(size),
        "gasLimit": qty(h.gas_limit),
        "gasUsed": qty(h.gas_used),
        "timestamp": qty(h.timestamp),
        "mixHash": data(h.mix_hash),
        "baseFeePerGas": qty(h.base_fee_per_gas or 0),
        "uncles": [],
        "transactions": [transaction_json(block, i) for i in range(len(block.transactions))]
        if full
        else [data(tx.hash) for tx in block.transactions],
    }
    for field, key in _LATER_FIELDS:
        value = getattr(h, field, None)
        if value is not None:
            out[key] = data(value) if isinstance(value, bytes) else qty(value)
    if getattr(h, "withdrawals_root", None) is not None:
        out["withdrawals"] = []
    return out


def camel(fields: dict[str, Any]) -> dict[str, Any]:
    """snake_case keys to camelCase, bytes to data, ints to quantities, lists of bytes to
    lists of data (the `dag_*` methods' shapes)."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name = "".join(w if i == 0 else w.title() for i, w in enumerate(key.split("_")))
        if isinstance(value, bytes):
            out[name] = data(value)
        elif isinstance(value, list):
            out[name] = [data(v) for v in value]
        elif isinstance(value, int) and not isinstance(value, bool):
            out[name] = qty(value)
        else:
            out[name] = value
    return out
