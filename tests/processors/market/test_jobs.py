from __future__ import annotations

import dataclasses

import pytest

from processors.execution.genesis import address_of
from processors.market.jobs import InvalidSignature, JobRequest, job_signer
from schemas.codec import default_codec
from schemas.events import JobSubmitted

KEY = b"\x11" * 32
DELEGATE = b"\x22" * 32
CHAIN = 27182


def request(**changes: object) -> JobRequest:
    fields: dict[str, object] = {
        "requester": address_of(KEY),
        "kind": "INFERENCE",
        "model_id": "tiny-gpt2",
        "input_cid": "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e",
        "required_vram_bytes": 1 << 26,
        "max_price_wei": 10**16,
        "deadline_ms": 2_000,
        "nonce": 7,
        "submitted_at_ms": 1_000,
        "params": {"manifest_cid": "bafk-example"},
    }
    fields.update(changes)
    return JobRequest(**fields)  # type: ignore[arg-type]


def test_a_signed_job_is_a_valid_record_whose_signer_recovers() -> None:
    record = request().signed(DELEGATE, CHAIN, b'{"prompt": "hi"}')
    decoded = default_codec().decode_as(default_codec().encode_event(record), JobSubmitted)
    assert decoded == record
    assert job_signer(decoded, CHAIN) == address_of(DELEGATE)


def test_every_field_is_bound_by_the_id() -> None:
    assert request().job_id(CHAIN) != request(nonce=8).job_id(CHAIN)
    assert request().job_id(CHAIN) != request(params={"manifest_cid": "other"}).job_id(CHAIN)
    assert request().job_id(CHAIN) != request().job_id(CHAIN + 1)
    record = request().signed(KEY, CHAIN, None)
    with pytest.raises(InvalidSignature, match="does not match"):
        job_signer(dataclasses.replace(record, max_price_wei=10**18), CHAIN)
    with pytest.raises(InvalidSignature):
        job_signer(dataclasses.replace(record, signature=b"\x00" * 65), CHAIN)
