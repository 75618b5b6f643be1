"""Signed job requests, results and node records (pure core).

A job request is signed by its requester's account or by a delegate the account authorised
in `JobMarket` (an API key): requests never wait for a block. The signed message is
Keccak-256 of a domain tag, the chain id and the RLP of the request's fields in schema order;
the job id *is* that hash, so a job cannot be re-signed into another one. Results, node
registrations and heartbeats are signed the same way by the node's key, whose address is
the node's id. Signatures are 65-byte recoverable secp256k1 (r, s, recovery id), as on DAG blocks.

A job that a contract asked for through `InferenceOracle` is signed by no key: its authority
is the request on the ledger. Its id names the request (`oracle_job_id`), its `nonce` is the
request id, its `signature` is empty, and the oracle refuses any answer whose model or input
differ from what was requested (`processors.market.oracle`), so the signer such a job counts
as is the oracle itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import rlp
from coincurve import PrivateKey, PublicKey
from eth_hash.auto import keccak

from processors.execution.genesis import INFERENCE_ORACLE
from schemas.codec import default_codec
from schemas.events import GpuNodeHeartbeat, GpuNodeRegistration, JobKind, JobResult, JobSubmitted
from schemas.record import Event

INFERENCE: JobKind = "INFERENCE"
TRAINING: JobKind = "TRAINING"


class InvalidSignature(ValueError):
    """A record whose signature does not recover to the address it claims."""


def _int(value: int | None) -> bytes:
    return b"" if value is None else value.to_bytes((value.bit_length() + 7) // 8 or 1)


def _text(value: str | None) -> bytes:
    return b"" if value is None else value.encode()


def signing_hash(domain: str, chain_id: int, fields: list[Any]) -> bytes:
    return keccak(rlp.encode([domain.encode(), _int(chain_id), fields]))


def sign(private_key: bytes, message_hash: bytes) -> bytes:
    return bytes(PrivateKey(private_key).sign_recoverable(message_hash, hasher=None))


def recover(message_hash: bytes, signature: bytes) -> bytes:
    """The address that signed `message_hash`; InvalidSignature if there is none."""
    try:
        key = PublicKey.from_signature_and_message(signature, message_hash, hasher=None)
    except Exception as exc:  # coincurve raises bare Exception/ValueError on bad signatures
        raise InvalidSignature(f"unreadable signature: {exc}") from None
    return keccak(key.format(compressed=False)[1:])[-20:]


@dataclass(frozen=True)
class JobRequest:
    """What a requester signs; `job_record` turns it into a `JobSubmitted` value."""

    requester: bytes
    kind: JobKind
    model_id: str
    input_cid: str
    required_vram_bytes: int
    max_price_wei: int
    deadline_ms: int
    nonce: int
    submitted_at_ms: int
    batch_size: int | None = None
    epochs: int | None = None
    dataset_cid: str | None = None
    params: Mapping[str, str] | None = None

    def fields(self) -> list[Any]:
        params = sorted((self.params or {}).items())
        return [
            self.requester,
            self.kind.encode(),
            self.model_id.encode(),
            self.input_cid.encode(),
            _int(self.batch_size),
            _int(self.epochs),
            _text(self.dataset_cid),
            [[k.encode(), v.encode()] for k, v in params],
            _int(self.required_vram_bytes),
            _int(self.max_price_wei),
            _int(self.deadline_ms),
            _int(self.nonce),
            _int(self.submitted_at_ms),
        ]

    def job_id(self, chain_id: int) -> bytes:
        return signing_hash("lattice-job-v1", chain_id, self.fields())

    def signed(self, private_key: bytes, chain_id: int, data: bytes | None) -> JobSubmitted:
        job_id = self.job_id(chain_id)
        return JobSubmitted(
            job_id=job_id,
            requester=self.requester,
            kind=self.kind,
            model_id=self.model_id,
            input_cid=self.input_cid,
            batch_size=self.batch_size,
            epochs=self.epochs,
            dataset_cid=self.dataset_cid,
            params=dict(self.params or {}),
            required_vram_bytes=self.required_vram_bytes,
            max_price_wei=self.max_price_wei,
            deadline_ms=self.deadline_ms,
            nonce=self.nonce,
            submitted_at_ms=self.submitted_at_ms,
            signature=sign(private_key, job_id),
            input=data,
        )


def request_of(record: JobSubmitted) -> JobRequest:
    return JobRequest(
        requester=record.requester,
        kind=record.kind,
        model_id=record.model_id,
        input_cid=record.input_cid,
        required_vram_bytes=record.required_vram_bytes,
        max_price_wei=record.max_price_wei,
        deadline_ms=record.deadline_ms,
        nonce=record.nonce,
        submitted_at_ms=record.submitted_at_ms,
        batch_size=record.batch_size,
        epochs=record.epochs,
        dataset_cid=record.dataset_cid,
        params=record.params,
    )


#: The params entry naming the InferenceOracle request a job answers.
ORACLE_REQUEST = "oracle_request"


def oracle_job_id(chain_id: int, request_id: int) -> bytes:
    return signing_hash("lattice-oracle-job-v1", chain_id, [INFERENCE_ORACLE, _int(request_id)])


def is_oracle_job(record: JobSubmitted) -> bool:
    """Whether a contract asked for this job through the InferenceOracle (no signature)."""
    return not record.signature and ORACLE_REQUEST in record.params


def job_signer(record: JobSubmitted, chain_id: int) -> bytes:
    """The address that signed a job request (the requester or its delegate; the oracle for
    a job it asked for); InvalidSignature when the id does not match the fields or the
    signature is unreadable."""
    if is_oracle_job(record):
        request = record.params[ORACLE_REQUEST]
        if not request.isdigit() or int(request) != record.nonce:
            raise InvalidSignature(f"oracle request {request!r} is not the job's nonce")
        if record.job_id != oracle_job_id(chain_id, record.nonce):
            raise InvalidSignature("job id is not the oracle request's")
        return INFERENCE_ORACLE
    job_id = request_of(record).job_id(chain_id)
    if job_id != record.job_id:
        raise InvalidSignature("job id does not match the signed fields")
    return recover(job_id, record.signature)


def result_hash(record: JobResult, chain_id: int) -> bytes:
    """What a node signs in a `JobResult`: everything but the signature, the cause and the
    inline output (whose digest and CID are signed)."""
    t, h = record.timings, record.hardware
    return signing_hash(
        "lattice-result-v1",
        chain_id,
        [
            record.job_id,
            record.node,
            _int(record.attempt),
            record.output_cid.encode(),
            record.output_digest,
            _int(record.output_size),
            record.fingerprint_scheme.encode(),
            record.fingerprint,
            [_int(t.queue_ms), _int(t.load_ms), _int(t.compute_ms)],
            [
                h.device_name.encode(),
                _int(h.vram_bytes),
                _text(h.driver_version),
                h.execution_provider.encode(),
                _int(h.threads),
            ],
            _int(record.completed_at_ms),
        ],
    )


def node_record_hash(
    domain: str, record: GpuNodeRegistration | GpuNodeHeartbeat, chain_id: int
) -> bytes:
    """What a node signs in its registration or heartbeat: the record's canonical Avro body
    without the signature (both schemas end with it), so every field is covered."""
    expected: type[Event] = {
        "node-registration": GpuNodeRegistration,
        "node-heartbeat": GpuNodeHeartbeat,
    }[domain]
    if not isinstance(record, expected):
        raise TypeError(f"a {domain} signs a {expected.SCHEMA}")
    body = default_codec().encode_event(dataclasses.replace(record, signature=b""))
    return signing_hash(f"lattice-{domain}-v1", chain_id, [body])
