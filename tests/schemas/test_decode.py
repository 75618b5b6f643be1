"""Decoding is total: any bytes give an event or a `DecodeError` with a known code, the same
one every time, quickly and without allocating what a length claims. Fixed seed, bounded
counts: the same examples run in CI every time."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from schemas.codec import DECODE_ERRORS, MARKER, UINT256_LOGICAL, DecodeError, default_codec
from schemas.record import Event
from tests.avro_strategies import records

CODEC = default_codec()
NAMES = CODEC.names()
HEADERS = [CODEC.schema(name).header for name in NAMES]
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def outcome(data: bytes | None, expect: str | None = None) -> tuple[str, Any]:
    """What decoding gives: ("event", the event) or ("error", (code, message)); anything
    else raised fails the test."""
    try:
        event = CODEC.decode_event(data, expect)
    except DecodeError as exc:
        assert exc.code in DECODE_ERRORS, exc.code
        return "error", (exc.code, str(exc))
    assert isinstance(event, Event)
    return "event", event


def zigzag(n: int) -> bytes:
    """An Avro long, without the range check a writer makes."""
    n = (n << 1) ^ (n >> 127)
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def least(schema: Any, named: dict[str, Any]) -> Any:
    """The smallest record of a schema: zeros, empty strings, bytes and arrays, nulls."""
    if isinstance(schema, list):
        return least(schema[0], named)
    if isinstance(schema, str):
        return least(named[schema], named) if schema in named else least({"type": schema}, named)
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: least(f["type"], named) for f in schema["fields"]}
    if schema.get("logicalType") == UINT256_LOGICAL:
        return 0
    empty: dict[str, Any] = {
        "null": None,
        "boolean": False,
        "string": "",
        "bytes": b"",
        "array": [],
        "map": {},
    }
    if kind == "enum":
        return schema["symbols"][0]
    return empty.get(kind, 0)


def smallest(name: str) -> bytes:
    parsed = CODEC.schema(name).parsed
    return CODEC.encode(name, least(parsed, parsed["__named_schemas"]))


@st.composite
def encoded(draw: st.DrawFn) -> bytes:
    """A valid record of any schema."""
    name = draw(st.sampled_from(NAMES))
    return CODEC.encode(name, draw(records(CODEC.schema(name))))


def flipped(data: bytes, at: int, bit: int) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ 1 << bit]) + data[at + 1 :]


#: Bytes from random to nearly valid: noise; a known header then noise; a valid record cut
#: short, with bytes flipped or with bytes added.
junk = st.one_of(
    st.binary(max_size=200),
    st.builds(bytes.__add__, st.sampled_from(HEADERS), st.binary(max_size=200)),
    st.builds(lambda data, n: data[: max(0, len(data) - n)], encoded(), st.integers(1, 64)),
    st.builds(flipped, encoded(), st.integers(0, 10_000), st.integers(0, 7)),
    st.builds(bytes.__add__, encoded(), st.binary(min_size=1, max_size=8)),
)


@seed(13)
@FUZZ
@given(junk)
def test_any_bytes_decode_or_raise_decode_error_alike_every_time(data: bytes) -> None:
    first = outcome(data)
    assert outcome(data) == first
    if first[0] == "event":
        # What decodes is a record its schema's writer writes back to the same bytes.
        assert CODEC.encode_event(first[1]) == data


@seed(13)
@FUZZ
@given(encoded(), st.data())
def test_every_strict_prefix_of_a_record_is_a_decode_error(
    data: bytes, draw: st.DataObject
) -> None:
    cut = draw.draw(st.integers(0, len(data) - 1))
    kind, _ = outcome(data[:cut])
    assert kind == "error"


@seed(13)
@FUZZ
@given(encoded(), st.binary(min_size=1, max_size=16))
def test_bytes_after_a_record_are_a_decode_error(data: bytes, extra: bytes) -> None:
    assert outcome(data + extra)[1][0] == "trailing_bytes"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("claim", [2**31, 2**62, -(2**62), 2**63 - 1])
def test_absurd_lengths_and_counts_cost_nothing(name: str, claim: int) -> None:
    """A length or count claiming gigabytes, at the start of a body and after each of its
    first fields: an error, at once, without the memory it claims."""
    good = smallest(name)
    header, body = good[:10], good[10:]
    for at in range(min(len(body), 16) + 1):
        data = header + body[:at] + zigzag(claim) + b"\x02" * 100
        tracemalloc.start()
        began = time.monotonic()
        try:
            outcome(data)
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert time.monotonic() - began < 1.0
        assert peak < 1_000_000, (name, at, peak)


def test_no_schema_has_items_that_take_no_bytes() -> None:
    """Why a count cannot spin: every array item and map value takes at least a byte, so a
    count runs at most to the end of the record."""

    def takes_bytes(schema: Any, named: dict[str, Any]) -> bool:
        if isinstance(schema, str):
            return schema != "null" and (schema not in named or takes_bytes(named[schema], named))
        if isinstance(schema, list):
            return True  # the branch index
        kind = schema["type"]
        if kind == "record":
            return any(takes_bytes(f["type"], named) for f in schema["fields"])
        if kind == "fixed":
            return bool(schema["size"])
        return bool(kind != "null")

    def walk(schema: Any, named: dict[str, Any], where: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                walk(branch, named, where)
        elif isinstance(schema, dict):
            kind = schema["type"]
            if kind in ("array", "map"):
                items = schema["items" if kind == "array" else "values"]
                assert takes_bytes(items, named), where
                walk(items, named, where)
            elif kind == "record":
                for f in schema["fields"]:
                    walk(f["type"], named, f"{where}.{f['name']}")

    for name in NAMES:
        parsed = CODEC.schema(name).parsed
        walk(parsed, parsed["__named_schemas"], name)


def test_each_check_has_its_code() -> None:
    position = CODEC.encode("lattice.common.Position", {"topic": "t", "partition": 0, "offset": 1})
    # AccountState: the address (bytes), then the balance (a uint256: here 33 bytes).
    account = smallest("lattice.state.AccountState")
    too_big = account[:11] + zigzag(33) + b"\x01" * 33 + account[12:]
    check = CODEC.encode("lattice.jobs.VerdictCheck", {"name": "", "passed": False, "detail": ""})
    cases = {
        "no_value": None,
        "bad_marker": b"\x00\x01" + position[2:],
        "unknown_schema": MARKER + b"\xff" * 8 + position[10:],
        "corrupt_body": position[:-1],
        "trailing_bytes": position + b"\x00",
        "uint256 of 33 bytes": too_big,
        "long in redundant bytes": position[:12] + b"\x80\x00" + position[13:],
        "boolean byte 0x80": check[:-2] + b"\x80" + check[-1:],
        "uint256 with a leading zero": account[:11] + zigzag(2) + b"\x00\x01" + account[12:],
    }
    codes = {case: outcome(data)[1][0] for case, data in cases.items()}
    assert codes == {
        "no_value": "no_value",
        "bad_marker": "bad_marker",
        "unknown_schema": "unknown_schema",
        "corrupt_body": "corrupt_body",
        "trailing_bytes": "trailing_bytes",
        "uint256 of 33 bytes": "corrupt_body",
        "long in redundant bytes": "non_canonical",
        "boolean byte 0x80": "non_canonical",
        "uint256 with a leading zero": "non_canonical",
    }
    assert outcome(check[:-2] + b"\x01" + check[-1:])[0] == "event"
    assert outcome(position, "lattice.tx.TransactionSubmitted")[1][0] == "wrong_schema"
    assert outcome(account[:11] + zigzag(32) + b"\xff" * 32 + account[12:])[0] == "event"
