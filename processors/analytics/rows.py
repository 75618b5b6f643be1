"""Events to rows (pure core): each decoded record becomes rows of the analytics tables.

The functions see one record and its source position and nothing else, so the same log
always gives the same rows: a replay into an empty database is identical to the live one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

from processors.execution.transactions import ChainRules, InvalidTransaction, decode_transaction
from schemas.events import (
    AccountState,
    BlockExecuted,
    BlockOrdered,
    BlockProposed,
    GpuNodeHeartbeat,
    GpuNodeRegistration,
    JobAssigned,
    JobResult,
    JobSettled,
    JobSubmitted,
    JobVerdict,
    ModelManifest,
    Receipt,
    TransactionRejected,
)

Row = tuple[Any, ...]
Rows = Iterator[tuple[str, Row]]


def hx(value: bytes | None) -> str | None:
    return None if value is None else "0x" + value.hex()


def ts(ms: int) -> dt.datetime:
    """Milliseconds since the epoch as a naive UTC timestamp (DuckDB's TIMESTAMP)."""
    return dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ms)


def _blocks(r: BlockExecuted) -> Rows:
    yield "blocks", (
        r.number, hx(r.hash), hx(r.parent_hash), hx(r.dag_block),
        hx(r.state_root), hx(r.receipts_root), hx(r.transactions_root),
        r.gas_used, r.gas_limit, r.base_fee_per_gas, ts(r.timestamp * 1000),
        hx(r.fee_recipient), len(r.transaction_hashes), r.rejected_count,
    )  # fmt: skip


def _proposed(r: BlockProposed) -> Rows:
    yield "proposed_blocks", (
        hx(r.hash), [hx(p) for p in r.parents], hx(r.proposer), ts(r.timestamp_ms),
        r.sequence, len(r.transactions),
    )  # fmt: skip


def _ordered(rules: ChainRules) -> Callable[[BlockOrdered], Rows]:
    def rows(r: BlockOrdered) -> Rows:
        chain = hx(r.hash)
        yield "dag_order", (
            chain, chain, r.chain_index, True, "blue", hx(r.selected_parent),
            r.blue_score, r.blue_work,
        )  # fmt: skip
        for colour, members in (("blue", r.mergeset_blues), ("red", r.mergeset_reds)):
            for member in members:
                if member != r.hash:
                    yield "dag_order", (
                        hx(member), chain, r.chain_index, False, colour, None, None, None,
                    )  # fmt: skip
        for item in r.transactions:
            try:
                tx = decode_transaction(item.raw, rules)
            except InvalidTransaction:
                continue  # never executed either; the execution processor logs it as rejected
            yield "ordered_transactions", (
                hx(tx.hash), tx.nonce, hx(tx.sender), hx(tx.to), tx.value, tx.gas_limit,
                tx.gas_price, tx.max_fee_per_gas, tx.max_priority_fee_per_gas, hx(tx.data),
                tx.tx_type, hx(item.dag_block), r.chain_index,
            )  # fmt: skip

    return rows


def _receipt(r: Receipt) -> Rows:
    yield "receipts", (
        hx(r.transaction_hash), r.transaction_index, r.block_number, hx(r.block_hash),
        hx(r.from_address), hx(r.to_address), hx(r.contract_address), r.status,
        r.gas_used, r.cumulative_gas_used, r.effective_gas_price, len(r.logs),
    )  # fmt: skip
    for log in r.logs:
        topics = [hx(t) for t in log.topics] + [None] * (4 - len(log.topics))
        yield "logs", (
            hx(r.transaction_hash), log.log_index, r.block_number, hx(log.address),
            *topics[:4], hx(log.data),
        )  # fmt: skip


def _rejected(r: TransactionRejected) -> Rows:
    yield "rejected_transactions", (
        hx(r.hash), hx(r.sender), r.nonce, r.block_number, hx(r.dag_block),
        r.code, r.reason,
    )  # fmt: skip


def _account(r: AccountState) -> Rows:
    yield "accounts", (
        hx(r.address), r.balance, r.nonce, hx(r.code_hash), hx(r.storage_root),
        r.block_number,
    )  # fmt: skip


def _node(r: GpuNodeRegistration) -> Rows:
    devices = r.devices
    yield "gpu_nodes", (
        hx(r.node), r.price_wei_per_hour, r.stake_wei, len(devices),
        [d.name for d in devices], sum(d.vram_bytes for d in devices),
        sum(d.peak_fp16_gflops for d in devices), r.cpu_model, r.cpu_cores,
        r.ram_bytes, list(r.runtimes), ts(r.registered_at_ms), r.sequence,
    )  # fmt: skip


def _heartbeat(r: GpuNodeHeartbeat) -> Rows:
    devices = r.devices
    utilisation = sum(d.utilisation_pct for d in devices) // len(devices) if devices else None
    used = sum(d.vram_used_bytes for d in devices) if devices else None
    yield "gpu_heartbeats", (
        hx(r.node), r.sequence, ts(r.timestamp_ms), utilisation, used,
        r.jobs_in_flight,
    )  # fmt: skip


def _model(r: ModelManifest) -> Rows:
    yield "models", (
        r.name, r.version, hx(r.owner), r.model_type, r.format, r.manifest_cid,
        r.total_bytes, r.parameter_count, r.vram_required_bytes,
        ts(r.registered_at_ms),
    )  # fmt: skip


def _job(r: JobSubmitted) -> Rows:
    yield "jobs", (
        hx(r.job_id), hx(r.requester), r.kind, r.model_id,
        r.params.get("manifest_cid"), r.input_cid, r.epochs, r.batch_size,
        r.dataset_cid, r.required_vram_bytes, r.max_price_wei,
        ts(r.submitted_at_ms), ts(r.deadline_ms),
    )  # fmt: skip


def _assignment(r: JobAssigned) -> Rows:
    yield "assignments", (
        hx(r.job_id), r.attempt, [hx(n) for n in r.nodes], r.redundant, hx(r.seed),
        len(r.candidates), sum(c.eligible for c in r.candidates),
        ts(r.lease_expires_ms),
    )  # fmt: skip


def _result(r: JobResult) -> Rows:
    t, h = r.timings, r.hardware
    yield "results", (
        hx(r.job_id), hx(r.node), r.attempt, r.output_cid, r.output_size,
        r.fingerprint_scheme, t.queue_ms, t.load_ms, t.compute_ms,
        h.device_name, h.execution_provider, h.threads, ts(r.completed_at_ms),
    )  # fmt: skip


def _verdict(r: JobVerdict) -> Rows:
    failed = [c.name for c in r.checks if not c.passed]
    yield "verdicts", (
        hx(r.job_id), hx(r.node), hx(r.verifier), r.outcome, failed,
        r.performance_bps, r.reputation_bps,
    )  # fmt: skip


def _settled(r: JobSettled) -> Rows:
    yield "settlements", (
        hx(r.job_id), hx(r.provider), hx(r.requester), hx(r.transaction_hash),
        r.paid_wei, r.fee_wei, r.refund_wei, r.slashed_wei,
    )  # fmt: skip


def converters(rules: ChainRules) -> dict[str, Callable[[Any], Rows]]:
    """Row makers by record schema."""
    return {
        "lattice.blocks.BlockExecuted": _blocks,
        "lattice.blocks.BlockProposed": _proposed,
        "lattice.blocks.BlockOrdered": _ordered(rules),
        "lattice.receipts.Receipt": _receipt,
        "lattice.tx.TransactionRejected": _rejected,
        "lattice.state.AccountState": _account,
        "lattice.gpu.GpuNodeRegistration": _node,
        "lattice.gpu.GpuNodeHeartbeat": _heartbeat,
        "lattice.models.ModelManifest": _model,
        "lattice.jobs.JobSubmitted": _job,
        "lattice.jobs.JobAssigned": _assignment,
        "lattice.jobs.JobResult": _result,
        "lattice.jobs.JobVerdict": _verdict,
        "lattice.jobs.JobSettled": _settled,
    }
