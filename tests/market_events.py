"""Valid market events for tests, with defaults for what a test does not care about."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from eth_abi.abi import encode

from processors.execution.genesis import JOB_MARKET, address_of
from processors.market.chain import NODE_REGISTERED
from processors.market.jobs import JobRequest, node_record_hash, result_hash, sign
from schemas.events import (
    GpuDevice,
    GpuNodeHeartbeat,
    GpuNodeRegistration,
    HardwareSnapshot,
    JobAssigned,
    JobResult,
    JobSettled,
    JobSubmitted,
    Log,
    ModelManifest,
    Position,
    Receipt,
    Timings,
)

CHAIN_ID = 27182
CAUSE = Position(topic="t", partition=0, offset=0)


def registration(
    key: bytes,
    *,
    price: int = 1,
    sequence: int = 1,
    devices: Sequence[GpuDevice] = (),
    cpu_model: str = "cpu",
    cpu_cores: int = 2,
    ram_bytes: int = 1 << 30,
    chain_id: int = CHAIN_ID,
) -> GpuNodeRegistration:
    """A node's signed registration (it claims a huge stake: the ledger says otherwise)."""
    record = GpuNodeRegistration(
        node=address_of(key),
        price_wei_per_hour=price,
        stake_wei=10**30,
        devices=tuple(devices),
        cpu_model=cpu_model,
        cpu_cores=cpu_cores,
        ram_bytes=ram_bytes,
        runtimes=("onnxruntime-cpu",),
        worker_version="test",
        sequence=sequence,
        registered_at_ms=0,
        signature=b"",
    )
    digest = node_record_hash("node-registration", record, chain_id)
    return dataclasses.replace(record, signature=sign(key, digest))


def receipt(
    block: int,
    logs: Sequence[Log] = (),
    *,
    tx_hash: bytes = b"\x0e" * 32,
    to: bytes | None = JOB_MARKET,
    index: int = 0,
) -> Receipt:
    return Receipt(
        transaction_hash=tx_hash,
        transaction_index=index,
        block_number=block,
        block_hash=block.to_bytes(32, "big"),
        from_address=b"\x05" * 20,
        to_address=to,
        tx_type=2,
        status=1,
        gas_used=21_000,
        cumulative_gas_used=21_000,
        effective_gas_price=10**9,
        logs_bloom=bytes(256),
        logs=tuple(logs),
        cause=CAUSE,
    )


def submitted(
    job_id: bytes,
    *,
    requester: bytes = b"\x0a" * 20,
    price: int = 1_000,
    deadline_ms: int = 2_000,
    submitted_at_ms: int = 1_000,
) -> JobSubmitted:
    """A job record (not validly signed: for folds that do not check)."""
    return JobSubmitted(
        job_id=job_id,
        requester=requester,
        kind="INFERENCE",
        model_id="m",
        input_cid="c",
        required_vram_bytes=0,
        max_price_wei=price,
        deadline_ms=deadline_ms,
        nonce=0,
        submitted_at_ms=submitted_at_ms,
        signature=b"\x00" * 65,
    )


def assigned(job_id: bytes, attempt: int, nodes: Sequence[bytes]) -> JobAssigned:
    return JobAssigned(
        job_id=job_id,
        attempt=attempt,
        nodes=tuple(nodes),
        redundant=False,
        seed=b"\x00" * 32,
        candidates=(),
        lease_expires_ms=0,
        cause=CAUSE,
    )


def result(
    job_id: bytes,
    node_key: bytes,
    *,
    attempt: int = 0,
    output: bytes | None = b"{}",
    compute_ms: int = 10,
    completed_at_ms: int = 1_500,
    device_name: str = "cpu",
    chain_id: int = CHAIN_ID,
) -> JobResult:
    """A node's signed result, whose digest, CID and size say nothing true of `output`
    unless the caller makes them."""
    record = JobResult(
        job_id=job_id,
        node=address_of(node_key),
        attempt=attempt,
        output_cid="c",
        output_digest=b"\x00" * 32,
        output_size=len(output or b""),
        fingerprint_scheme="greedy-logits-f32-v1",
        fingerprint=b"",
        timings=Timings(queue_ms=0, load_ms=0, compute_ms=compute_ms),
        hardware=HardwareSnapshot(
            device_name=device_name, vram_bytes=0, execution_provider="cpu", threads=1
        ),
        completed_at_ms=completed_at_ms,
        signature=b"",
        output=output,
    )
    return signed_result(record, node_key, chain_id)


def signed_result(record: JobResult, node_key: bytes, chain_id: int = CHAIN_ID) -> JobResult:
    """`record` signed by `node_key` (after changing it)."""
    return dataclasses.replace(record, signature=sign(node_key, result_hash(record, chain_id)))


def settled(job_id: bytes, tx: bytes, provider: bytes = b"\x0b" * 20) -> JobSettled:
    return JobSettled(
        job_id=job_id,
        provider=provider,
        requester=b"\x0a" * 20,
        transaction_hash=tx,
        paid_wei=0,
        fee_wei=0,
        refund_wei=0,
        slashed_wei=0,
        cause=CAUSE,
    )


def heartbeat(key: bytes, timestamp_ms: int, sequence: int = 2) -> GpuNodeHeartbeat:
    record = GpuNodeHeartbeat(
        node=address_of(key),
        sequence=sequence,
        timestamp_ms=timestamp_ms,
        devices=(),
        jobs_in_flight=0,
        signature=b"",
    )
    digest = node_record_hash("node-heartbeat", record, CHAIN_ID)
    return dataclasses.replace(record, signature=sign(key, digest))


def staked(node: bytes, stake: int, block: int = 1) -> Receipt:
    """A receipt whose JobMarket log says `node` registered with `stake` on the ledger."""
    log = Log(
        log_index=0,
        address=JOB_MARKET,
        topics=(NODE_REGISTERED, node.rjust(32, b"\0")),
        data=encode(["uint256", "uint256"], [stake, 1]),
    )
    return receipt(block, [log], tx_hash=block.to_bytes(32, "big"))


def manifest(name: str, cid: str, parameters: int = 1_000) -> ModelManifest:
    return ModelManifest(
        model_id=name,
        name=name,
        version=1,
        owner=b"\x01" * 20,
        model_type="gpt2",
        format="onnx",
        manifest_cid=cid,
        chunks=(),
        total_bytes=0,
        parameter_count=parameters,
        vram_required_bytes=1 << 20,
        inputs=(),
        outputs=(),
        registered_at_ms=0,
    )


def signed_job(
    key: bytes, manifest_cid: str, nonce: int, *, now_ms: int, price: int = 10**18
) -> JobSubmitted:
    """A job `key`'s account signed itself, on a registered model, due in a minute."""
    request = JobRequest(
        requester=address_of(key),
        kind="INFERENCE",
        model_id="m",
        input_cid="c",
        required_vram_bytes=1 << 20,
        max_price_wei=price,
        deadline_ms=now_ms + 60_000,
        nonce=nonce,
        submitted_at_ms=now_ms,
        params={"manifest_cid": manifest_cid},
    )
    return request.signed(key, CHAIN_ID, b'{"prompt": "hi"}')
