"""JSON-RPC's view of the pending transactions, geth's `txpool` namespace: what the next
blocks can take (`pending`) and what waits behind a missing nonce (`queued`), from the
network's pending transactions this gateway follows (`gateway.intake`)."""

from __future__ import annotations

from typing import Any

from web3 import Web3

from gateway.formats import parse_data, pending_transaction_json, qty
from gateway.intake import Pool, TransactionIntake
from gateway.jsonrpc import param
from gateway.ledger import LedgerQueries
from processors.execution.transactions import Transaction


class PoolMethods:
    def __init__(self, ledger: LedgerQueries, intake: TransactionIntake) -> None:
        self.ledger = ledger
        self.intake = intake

    def _pool(self) -> Pool:
        return self.intake.pool(self.ledger.nonce)

    def txpool_status(self, params: list[Any]) -> dict[str, str]:
        pool = self._pool()
        return {"pending": qty(_count(pool.pending)), "queued": qty(_count(pool.queued))}

    def txpool_content(self, params: list[Any]) -> dict[str, Any]:
        pool = self._pool()
        return {"pending": self._by_sender(pool.pending), "queued": self._by_sender(pool.queued)}

    def txpool_contentFrom(self, params: list[Any]) -> dict[str, Any]:
        sender = parse_data(param(params, 0, "address"), "address", 20)
        pool = self._pool()
        return {
            part: {str(tx.nonce): self._json(tx) for tx in txs.get(sender, [])}
            for part, txs in (("pending", pool.pending), ("queued", pool.queued))
        }

    def txpool_inspect(self, params: list[Any]) -> dict[str, Any]:
        pool = self._pool()
        return {
            part: {
                _checksum(sender): {str(tx.nonce): _summary(tx) for tx in txs}
                for sender, txs in found.items()
            }
            for part, found in (("pending", pool.pending), ("queued", pool.queued))
        }

    def _by_sender(self, part: dict[bytes, list[Transaction]]) -> dict[str, Any]:
        return {
            _checksum(sender): {str(tx.nonce): self._json(tx) for tx in txs}
            for sender, txs in part.items()
        }

    def _json(self, tx: Transaction) -> dict[str, Any]:
        return pending_transaction_json(self.ledger.decoded(tx))


#: geth writes a multiplication sign between the gas and its price.
TIMES = "\u00d7"


def _checksum(address: bytes) -> str:
    return str(Web3.to_checksum_address(address))


def _count(part: dict[bytes, list[Transaction]]) -> int:
    return sum(len(txs) for txs in part.values())


def _summary(tx: Transaction) -> str:
    """geth's one-line summary of a pooled transaction."""
    to = _checksum(tx.to) if tx.to is not None else "contract creation"
    return f"{to}: {tx.value} wei + {tx.gas_limit} gas {TIMES} {tx.fee_cap} wei"
