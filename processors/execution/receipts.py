"""Receipts as the ledger states them (pure core): the one builder behind both the
`lattice.receipts` events and the gateway's JSON-RPC receipts.

A receipt's facts come from its block's header, its transaction and py-evm's receipt:

- status: since Byzantium a receipt's first field is the status, `b"\\x01"` for success and
  empty for failure;
- gas used: the receipt's cumulative gas less the previous receipt's;
- effective gas price: `processors.execution.transactions.effective_gas_price`;
- logs: numbered across the whole block, in transaction order;
- contract address: for a creation, the address derived from the sender and its nonce.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from eth._utils.address import generate_contract_address
from eth.abc import ReceiptAPI
from eth_typing import Address

from processors.execution.transactions import effective_gas_price
from schemas.events import Log, Position, Receipt


@dataclass(frozen=True)
class ReceiptSource:
    """What a receipt needs of its transaction (ours or py-evm's)."""

    hash: bytes
    sender: bytes
    to: bytes | None
    nonce: int
    tx_type: int
    fee_cap: int
    tip_cap: int


@dataclass(frozen=True)
class BlockReceipt:
    """One transaction's receipt in its block: `schemas.events.Receipt` without a cause."""

    transaction_hash: bytes
    transaction_index: int
    block_number: int
    block_hash: bytes
    from_address: bytes
    to_address: bytes | None
    contract_address: bytes | None
    tx_type: int
    status: int
    gas_used: int
    cumulative_gas_used: int
    effective_gas_price: int
    logs_bloom: bytes
    logs: tuple[Log, ...]

    def event(self, cause: Position) -> Receipt:
        """The `lattice.receipts` event of this receipt (the same fields, and its cause)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Receipt(**fields, cause=cause)


def succeeded(receipt: ReceiptAPI) -> bool:
    """Whether a (post-Byzantium) receipt records success."""
    return bool(receipt.state_root == b"\x01")


def block_receipts(
    number: int,
    block_hash: bytes,
    base_fee: int,
    transactions: Sequence[ReceiptSource],
    receipts: Sequence[ReceiptAPI],
) -> tuple[BlockReceipt, ...]:
    """The receipts of a block's transactions, in order."""
    out = []
    previous = 0
    log_index = 0
    for index, (tx, receipt) in enumerate(zip(transactions, receipts, strict=True)):
        logs = []
        for entry in receipt.logs:
            topics = tuple(t.to_bytes(32, "big") for t in entry.topics)
            logs.append(
                Log(log_index=log_index, address=entry.address, topics=topics, data=entry.data)
            )
            log_index += 1
        created = None
        if not tx.to:
            created = bytes(generate_contract_address(Address(tx.sender), tx.nonce))
        out.append(
            BlockReceipt(
                transaction_hash=tx.hash,
                transaction_index=index,
                block_number=number,
                block_hash=block_hash,
                from_address=tx.sender,
                to_address=tx.to or None,
                contract_address=created,
                tx_type=tx.tx_type,
                status=1 if succeeded(receipt) else 0,
                gas_used=receipt.gas_used - previous,
                cumulative_gas_used=receipt.gas_used,
                effective_gas_price=effective_gas_price(tx.fee_cap, tx.tip_cap, base_fee),
                logs_bloom=receipt.bloom.to_bytes(256, "big"),
                logs=tuple(logs),
            )
        )
        previous = receipt.gas_used
    return tuple(out)
