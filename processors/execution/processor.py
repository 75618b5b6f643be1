"""The execution processor: `lattice.blocks.ordered` in; executed blocks, receipts, account
states and rejected transactions out.

A thin shell around `Ledger`: for each ordered chain block it executes the EVM block, sends
the events and, once the broker acknowledged them, commits py-evm's writes (prefixed `evm/`)
together with the input offset in one synced rocksdict batch. A crash at any point resumes
from the last committed block: no transaction is applied twice or lost, and the state root
at every height is what an uninterrupted run computes.

Outputs are sent receipts, rejections and accounts first and the executed block last. On
restart, a block the executed topic already holds is not sent again, and for the block that
was being sent when the process died, the records already on the log (recognised by their
`cause`, the ordered block's offset) are skipped: every transaction gets exactly one receipt.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from coincurve import PrivateKey

from processors.execution.checkpoints import sign_checkpoint
from processors.execution.db import overlay_chain_db
from processors.execution.genesis import Genesis
from processors.execution.ledger import BlockResult, Ledger
from processors.execution.transactions import ChainRules
from processors.state import ProcessorState
from schemas.codec import default_codec
from streams.kafka import Delivered, Producer, Reader
from streams.metrics import BLOCK_EXECUTION_SECONDS, EVM_TRANSACTIONS
from streams.topics import TopicSpec, hex_key, topic

log = logging.getLogger(__name__)

ORDERED = topic("blocks.ordered")
EXECUTED = topic("blocks.executed")
RECEIPTS = topic("receipts")
ACCOUNTS = topic("state.accounts")
REJECTED = topic("tx.rejected")
CHECKPOINTS = topic("checkpoints")
EVM_PREFIX = b"evm/"


class ExecutionProcessor:
    def __init__(
        self,
        bootstrap: str,
        state_dir: Path,
        genesis: Genesis,
        rules: ChainRules,
        *,
        group_id: str = "lattice-execution",
        publish: bool = True,
        checkpoint_key: PrivateKey | None = None,
        checkpoint_every: int = 4,
    ) -> None:
        #: A replica that does not publish sends only its checkpoints.
        self.publish = publish
        self.group_id = group_id
        self.checkpoint_key = checkpoint_key
        self.checkpoint_every = checkpoint_every
        self.state = ProcessorState(state_dir)
        self.codec = default_codec()
        db, self.overlay = overlay_chain_db(lambda key: self.state.get(EVM_PREFIX + key))
        self.ledger = Ledger(db, genesis, rules)
        self._commit_overlay({})  # the genesis, on a fresh store
        self.producer = Producer(bootstrap, client_id=f"{group_id}-out")
        self.published = last_block_number(bootstrap) if publish else 0
        self._sent_before_crash = sent_for(bootstrap, self.resume_from()) if publish else set()

    def _commit_overlay(self, offsets: dict[tuple[str, int], int]) -> None:
        changes = self.overlay.take_changes()
        puts = {EVM_PREFIX + k: v for k, v in changes.items() if v is not None}
        deletes = [EVM_PREFIX + k for k, v in changes.items() if v is None]
        if puts or deletes or offsets:
            self.state.commit(offsets, puts, deletes=deletes)

    def resume_from(self) -> int:
        stored = self.state.offset(ORDERED.name, 0)
        return 0 if stored is None else stored + 1

    def handle(self, message: Any) -> BlockResult | None:
        offset = message.offset()
        stored = self.state.offset(ORDERED.name, 0)
        if stored is not None and offset <= stored:
            return None
        ordered = self.codec.decode(message.value(), expect=ORDERED.schema).record
        cause = {"topic": ORDERED.name, "partition": 0, "offset": offset}
        started = time.perf_counter()
        try:
            result = self.ledger.execute(ordered)
        except Exception:
            self.overlay.discard_changes()
            raise
        number = result.header.block_number
        if self.publish and number > self.published:
            for future in self._send(result, cause):
                future.result(timeout=60)
            self.published = number
        if self.checkpoint_key is not None and number % self.checkpoint_every == 0:
            header = result.header
            checkpoint = sign_checkpoint(
                self.checkpoint_key, number, header.hash, header.state_root, self.group_id, cause
            )
            # Re-sent after a crash is harmless: the same signer's vote for a height counts once.
            self.producer.send(CHECKPOINTS, checkpoint, key=str(number)).result(timeout=60)
        self._commit_overlay({(ORDERED.name, 0): offset})
        BLOCK_EXECUTION_SECONDS.observe(time.perf_counter() - started)
        if result.carried:
            log.info("block %d full: %d transactions wait for the next", number, result.carried)
        EVM_TRANSACTIONS.labels("included").inc(len(result.included))
        EVM_TRANSACTIONS.labels("rejected").inc(len(result.rejected))
        return result

    def _send(self, result: BlockResult, cause: dict[str, Any]) -> list[Future[Delivered]]:
        header = result.header
        number = header.block_number
        futures = []
        already = self._sent_before_crash if cause["offset"] == self.resume_from() else set()
        outputs: list[tuple[TopicSpec, str, dict[str, Any]]] = []
        for item in result.included:
            outputs.append((RECEIPTS, hex_key(item.tx.hash), receipt_event(result, item, cause)))
        for r in result.rejected:
            rejected = {
                "hash": r.hash,
                "sender": r.sender,
                "nonce": r.nonce,
                "block_number": number,
                "dag_block": r.dag_block,
                "code": r.code,
                "reason": r.reason,
                "cause": cause,
            }
            outputs.append((REJECTED, hex_key(r.hash), rejected))
        for address in result.touched:
            account = {**self.ledger.account(address), "block_number": number, "cause": cause}
            outputs.append((ACCOUNTS, hex_key(address), account))
        for spec, key, value in outputs:
            if (spec.name, key) not in already:
                futures.append(self.producer.send(spec, value, key=key))
        for future in futures:
            future.result(timeout=60)
        return [
            self.producer.send(
                EXECUTED,
                {
                    "number": number,
                    "hash": header.hash,
                    "parent_hash": header.parent_hash,
                    "dag_block": result.dag_block,
                    "state_root": header.state_root,
                    "receipts_root": header.receipt_root,
                    "transactions_root": header.transaction_root,
                    "logs_bloom": header.bloom.to_bytes(256, "big"),
                    "gas_used": header.gas_used,
                    "gas_limit": header.gas_limit,
                    "base_fee_per_gas": header.base_fee_per_gas,
                    "timestamp": header.timestamp,
                    "fee_recipient": header.coinbase,
                    "transaction_hashes": [i.tx.hash for i in result.included],
                    "rejected_count": len(result.rejected),
                    "cause": cause,
                },
                timestamp_ms=header.timestamp * 1000,
            )
        ]

    def close(self) -> None:
        self.producer.close()
        self.state.close()


def receipt_event(result: BlockResult, item: Any, cause: dict[str, Any]) -> dict[str, Any]:
    receipt = item.receipt
    first_log = sum(len(i.receipt.logs) for i in result.included[: item.index])
    return {
        "transaction_hash": item.tx.hash,
        "transaction_index": item.index,
        "block_number": result.header.block_number,
        "block_hash": result.header.hash,
        "from_address": item.tx.sender,
        "to_address": item.tx.to,
        "contract_address": item.contract_address,
        "tx_type": item.tx.tx_type,
        # Since Byzantium the receipt's first field is the status: b"\x01" or b"".
        "status": 1 if receipt.state_root == b"\x01" else 0,
        "gas_used": item.gas_used,
        "cumulative_gas_used": receipt.gas_used,
        "effective_gas_price": item.effective_gas_price,
        "logs_bloom": receipt.bloom.to_bytes(256, "big"),
        "logs": [
            {
                "log_index": first_log + n,
                "address": entry.address,
                "topics": [t.to_bytes(32, "big") for t in entry.topics],
                "data": entry.data,
            }
            for n, entry in enumerate(receipt.logs)
        ],
        "cause": cause,
    }


def sent_for(bootstrap: str, offset: int, window: int = 20_000) -> set[tuple[str, str]]:
    """(topic, key) of the records already on the output topics whose cause is the ordered
    block at `offset`: what a crash left half-sent. Only the partitions' tails are read."""
    found: set[tuple[str, str]] = set()
    reader = Reader(bootstrap, client_id="lattice-execution-resume")
    try:
        spans = reader.end_offsets_of([RECEIPTS.name, REJECTED.name, ACCOUNTS.name])
        starts = {k: max(low, end - window) for k, (low, end) in spans.items() if end > low}
        if starts:
            for message in reader.read(starts, until={k: end for k, (_, end) in spans.items()}):
                record = reader.decode(message)
                cause = record.value.get("cause")
                if cause and cause["topic"] == ORDERED.name and cause["offset"] == offset:
                    found.add((record.topic, record.key or ""))
        return found
    finally:
        reader.close()


def last_block_number(bootstrap: str) -> int:
    """The number of the last block on the executed topic (0 when empty)."""
    reader = Reader(bootstrap, client_id="lattice-execution-tail")
    try:
        low, end = reader.end_offsets(EXECUTED.name)[0]
        if end <= low:
            return 0
        last = 0
        for message in reader.read({(EXECUTED.name, 0): end - 1}, until={(EXECUTED.name, 0): end}):
            last = max(last, reader.decode(message).value["number"])
        return last
    finally:
        reader.close()
