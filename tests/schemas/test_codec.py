from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import AVRO_DIR, MARKER, Codec, CodecError, default_codec, jsonable
from streams.topics import TOPICS
from tests.avro_strategies import records

CODEC = default_codec()


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO exactly as the Avro specification gives it (independent of fastavro)."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


@pytest.mark.parametrize("name", CODEC.names())
def test_every_schema_round_trips_generated_records(name: str) -> None:
    info = CODEC.schema(name)

    @settings(max_examples=40, deadline=None)
    @given(records(info))
    def round_trip(record: dict[str, Any]) -> None:
        data = CODEC.encode(name, record)
        decoded = CODEC.decode(data)
        assert decoded.name == name
        assert decoded.record == record

    round_trip()


@pytest.mark.parametrize("name", CODEC.names())
def test_header_is_marker_and_spec_fingerprint(name: str) -> None:
    info = CODEC.schema(name)
    assert info.header[:2] == MARKER == b"\xc3\x01"
    assert int.from_bytes(info.header[2:], "little") == crc64_avro(info.canonical.encode())


def test_every_topic_schema_exists_and_documents_every_field() -> None:
    for spec in TOPICS:
        assert spec.schema in CODEC.current, spec.name
    for name in CODEC.names():
        raw = json.loads((AVRO_DIR / f"{name}.avsc").read_text())
        assert raw.get("doc"), name
        for field in raw["fields"]:
            assert field.get("doc"), f"{name}.{field['name']} has no doc"


def submitted(**changes: Any) -> dict[str, Any]:
    record = {
        "hash": b"\x01" * 32,
        "raw": b"\x02",
        "sender": b"\x03" * 20,
        "tx_type": 2,
        "chain_id": 1,
        "nonce": 0,
        "gas_limit": 21000,
        "to": None,
        "value": 2**255,
        "gas_price": None,
        "max_fee_per_gas": 1,
        "max_priority_fee_per_gas": 1,
        "received_at_ms": 0,
        "source": "rest",
    }
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"value": -1}, "out of range"),
        ({"value": 2**256}, "out of range"),
        ({"value": True}, "needs an int"),
        ({"nonce": "zero"}, "does not match"),
        ({"bogus": 1}, "more fields"),
        ({"nonce": 2**63}, "does not match"),
    ],
)
def test_encode_rejects_bad_records_with_a_reason(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(CodecError, match=expected):
        CODEC.encode("lattice.tx.TransactionSubmitted", submitted(**changes))


def test_missing_field_without_default_is_an_error_and_defaults_fill_in() -> None:
    record = submitted()
    del record["nonce"]
    with pytest.raises(CodecError, match="nonce"):
        CODEC.encode("lattice.tx.TransactionSubmitted", record)
    record = submitted()
    del record["source"]  # has a default
    assert (
        CODEC.decode(CODEC.encode("lattice.tx.TransactionSubmitted", record)).record["source"]
        == "rest"
    )


@given(st.binary(max_size=40))
def test_decode_of_garbage_raises_codec_error_only(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        CODEC.decode(data)


def test_decode_rejects_unknown_fingerprint_and_truncation() -> None:
    good = CODEC.encode("lattice.tx.TransactionSubmitted", submitted())
    with pytest.raises(CodecError, match="unknown schema"):
        CODEC.decode(MARKER + b"\x00" * 8 + good[10:])
    with pytest.raises(CodecError, match="corrupt"):
        CODEC.decode(good[:-4])
    with pytest.raises(CodecError, match=r"expected a lattice\.state\.AccountState"):
        CODEC.decode(good, expect="lattice.state.AccountState")


def test_schema_files_must_be_named_by_full_name(tmp_path: Any) -> None:
    (tmp_path / "wrong.avsc").write_text(
        json.dumps({"type": "record", "name": "X", "namespace": "a", "fields": []})
    )
    with pytest.raises(CodecError, match=r"must be named a\.X\.avsc"):
        Codec(tmp_path, None)


def test_jsonable_renders_bytes_as_hex() -> None:
    assert jsonable({"a": b"\x01\xff", "b": [b"\x00"], "c": 5}) == {
        "a": "0x01ff",
        "b": ["0x00"],
        "c": 5,
    }
