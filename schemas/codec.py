"""Avro single-object encoding for Lattice events.

Every record on a Lattice topic is written as the Avro spec's *single-object encoding*:
the two marker bytes ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's Parsing Canonical Form, then the Avro binary body. A consumer therefore
always knows which schema (and which version of it) wrote a record, with no registry
service: the codec knows the current schemas and every frozen historical version, and
resolves an old writer schema to the current reader schema by Avro's resolution rules.

Unsigned 256-bit quantities (wei amounts, blue work, targets) use the ``bytes`` type with
the logical type ``lattice.uint256``: minimal big-endian bytes on the wire, a Python
``int`` in memory. Readers in other languages ignore the unknown logical type and see the
plain bytes, as the Avro spec requires.

Decoding is total: whatever the bytes (random, truncated, another schema's, a length
claiming gigabytes), it returns an event or raises `DecodeError`, whose `code` says which
check failed. Each check is a function of the bytes alone, so every consumer decides alike
on the same record. A body must be exactly one record: bytes left after it mean the
record is not what its header says (a writer never leaves any). A length never allocates
more than the record holds: fastavro reads bodies from the record's own buffer, and no
schema has an array of items that take no bytes, so a count can only run to the end of
the record (`tests/schemas/test_decode.py` holds both to account).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import fastavro
import fastavro.read
import fastavro.write
from fastavro.schema import fingerprint, load_schema, to_parsing_canonical_form

from schemas.events import EVENT_TYPES
from schemas.record import Encoded, Event

E = TypeVar("E", bound=Event)

AVRO_DIR = Path(__file__).parent / "avro"
HISTORY_DIR = Path(__file__).parent / "history"
MARKER = b"\xc3\x01"
HEADER_SIZE = len(MARKER) + 8
UINT256_LOGICAL = "lattice.uint256"
UINT256_MAX = (1 << 256) - 1


class CodecError(ValueError):
    """A record could not be encoded or decoded; the message says which schema and why."""


class DecodeError(CodecError):
    """Bytes that are not a record of a known schema (or not of the one expected).

    The only error decoding raises. `code` is one of `DECODE_ERRORS`, for machines (the
    dead-letter topic's `code`); the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


#: `DecodeError.code`s and what they mean.
DECODE_ERRORS = {
    "no_value": "no value at all (a tombstone)",
    "bad_marker": "shorter than a header, or not starting with the single-object marker",
    "unknown_schema": "written by a schema this codec has never known",
    "retired_schema": "written by a schema version whose record is no longer current",
    "wrong_schema": "a record of another schema than the one expected",
    "corrupt_body": "the body does not decode under its writer's schema",
    "trailing_bytes": "bytes follow the record's body",
    "non_canonical": "decodes, but not as its schema's writer writes it (a boolean byte "
    "other than 0 or 1, a long with redundant bytes, an array in several blocks...)",
}


def _write_uint256(datum: Any, schema: Any) -> bytes:
    # bool is an int subclass; a True balance is always a bug.
    if isinstance(datum, bool) or not isinstance(datum, int):
        raise CodecError(f"uint256 field needs an int, got {type(datum).__name__}")
    if datum < 0 or datum > UINT256_MAX:
        raise CodecError(f"uint256 field out of range: {datum}")
    return datum.to_bytes((datum.bit_length() + 7) // 8, "big")


def _read_uint256(data: bytes, writer_schema: Any, reader_schema: Any) -> int:
    # Out of range, it would decode here and fail when a processor writes it on.
    if len(data) > 32:
        raise ValueError(f"uint256 field of {len(data)} bytes")
    return int.from_bytes(data, "big")


fastavro.write.LOGICAL_WRITERS[f"bytes-{UINT256_LOGICAL}"] = _write_uint256
fastavro.read.LOGICAL_READERS[f"bytes-{UINT256_LOGICAL}"] = _read_uint256


@dataclass(frozen=True)
class SchemaInfo:
    """One parsed schema version."""

    name: str
    parsed: Any
    canonical: str
    fingerprint: int

    @property
    def header(self) -> bytes:
        return MARKER + self.fingerprint.to_bytes(8, "little")

    @property
    def fingerprint_hex(self) -> str:
        return f"{self.fingerprint:016x}"


@dataclass(frozen=True)
class Decoded:
    """A decoded record, the schema it now has and the version that wrote it."""

    name: str
    record: dict[str, Any]
    writer_fingerprint: int


def schema_info(parsed: Any) -> SchemaInfo:
    canonical = to_parsing_canonical_form(parsed)
    return SchemaInfo(
        name=parsed["name"],
        parsed=parsed,
        canonical=canonical,
        # fastavro spells the fingerprint as its little-endian bytes, in hex.
        fingerprint=int.from_bytes(bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")), "little"),
    )


def expanded_json(info: SchemaInfo) -> str:
    """The schema with every referenced named type inlined: self-contained, as frozen."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not k.startswith("__")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps(strip(info.parsed), indent=2, sort_keys=True) + "\n"


class Codec:
    """Encodes records of the current schemas; decodes records of any known version."""

    def __init__(self, avro_dir: Path = AVRO_DIR, history_dir: Path | None = HISTORY_DIR):
        self.current: dict[str, SchemaInfo] = {}
        for path in sorted(avro_dir.glob("*.avsc")):
            try:
                info = schema_info(load_schema(str(path)))
            except Exception as exc:  # fastavro raises several unrelated types
                raise CodecError(f"{path.name}: cannot parse schema: {exc}") from exc
            if f"{info.name}.avsc" != path.name:
                raise CodecError(f"{path.name}: file must be named {info.name}.avsc")
            self.current[info.name] = info
        self.by_fingerprint: dict[int, SchemaInfo] = {
            i.fingerprint: i for i in self.current.values()
        }
        if history_dir is not None:
            for path in sorted(history_dir.glob("*.avsc")):
                info = schema_info(fastavro.parse_schema(json.loads(path.read_text())))
                self.by_fingerprint.setdefault(info.fingerprint, info)

    def names(self) -> list[str]:
        return sorted(self.current)

    def schema(self, name: str) -> SchemaInfo:
        try:
            return self.current[name]
        except KeyError:
            raise CodecError(f"unknown schema {name!r}") from None

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        info = self.schema(name)
        buf = io.BytesIO()
        buf.write(info.header)
        try:
            fastavro.schemaless_writer(
                buf,
                info.parsed,
                record,
                strict_allow_default=True,
                disable_tuple_notation=True,
            )
        except CodecError as exc:
            raise CodecError(f"{name}: {exc}") from exc
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise CodecError(f"{name}: record does not match the schema: {exc}") from exc
        return buf.getvalue()

    def encode_event(self, event: Event | Encoded) -> bytes:
        """A typed event, single-object encoded under its class's schema (an `Encoded`
        one is already)."""
        if isinstance(event, Encoded):
            return event.value
        return self.encode(event.SCHEMA, event.to_avro())

    def decode_event(self, data: bytes | None, expect: type[Event] | str | None = None) -> Event:
        """A record as its typed event; with `expect` (a class or a schema's full name), a
        record of another schema is a `DecodeError` (the result is then an `expect`)."""
        name, record = self._decode(data, expect.SCHEMA if isinstance(expect, type) else expect)
        try:
            return EVENT_TYPES[name].from_avro(record)
        except (KeyError, TypeError, ValueError) as exc:  # a decoded record always fits
            raise DecodeError("corrupt_body", f"{name}: not a typed event: {exc!r}") from exc

    def decode_as(self, data: bytes, expect: type[E]) -> E:
        """A record that must be an `expect` event."""
        event = self.decode_event(data, expect)
        assert isinstance(event, expect)
        return event

    def writer_of(self, data: bytes | None) -> SchemaInfo:
        if not isinstance(data, bytes):  # a tombstone's value is None
            raise DecodeError("no_value", "a record without a value")
        if len(data) < HEADER_SIZE or data[:2] != MARKER:
            raise DecodeError("bad_marker", "not an Avro single-object encoded record (bad marker)")
        fp = int.from_bytes(data[2:HEADER_SIZE], "little")
        try:
            return self.by_fingerprint[fp]
        except KeyError:
            raise DecodeError(
                "unknown_schema", f"record written by an unknown schema (fingerprint {fp:016x})"
            ) from None

    def decode(self, data: bytes | None, expect: str | None = None) -> Decoded:
        writer = self.writer_of(data)
        name, record = self._decode(data, expect, writer)
        return Decoded(name, record, writer.fingerprint)

    def _decode(
        self, data: bytes | None, expect: str | None, writer: SchemaInfo | None = None
    ) -> tuple[str, dict[str, Any]]:
        """(schema name, record) of an encoded record."""
        writer = writer or self.writer_of(data)
        assert data is not None  # writer_of refuses None
        reader = self.current.get(writer.name)
        if reader is None:
            raise DecodeError(
                "retired_schema", f"schema {writer.name!r} is no longer known to this codec"
            )
        if expect is not None and writer.name != expect:
            raise DecodeError("wrong_schema", f"expected a {expect} record, got {writer.name}")
        body = io.BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(body, writer.parsed, reader.parsed)
        except Exception as exc:  # truncated bodies raise EOFError, bad unions IndexError...
            raise DecodeError(
                "corrupt_body", f"{writer.name}: corrupt record body: {exc!r}"
            ) from exc
        if not isinstance(record, dict):
            raise DecodeError("corrupt_body", f"{writer.name}: decoded body is not a record")
        left = len(data) - body.tell()
        if left:
            raise DecodeError(
                "trailing_bytes", f"{writer.name}: {left} bytes after the record's body"
            )
        if writer is reader and not self._canonical(data, writer, record):
            # One record, one encoding: bytes that differ and mean the same would give two
            # keys, hashes or archive frames to what every node must see as one record.
            raise DecodeError(
                "non_canonical", f"{writer.name}: not the record's canonical encoding"
            )
        return writer.name, record

    @staticmethod
    def _canonical(data: bytes, writer: SchemaInfo, record: dict[str, Any]) -> bool:
        out = io.BytesIO()
        out.write(data[:HEADER_SIZE])
        try:
            fastavro.schemaless_writer(out, writer.parsed, record)
        except (CodecError, ValueError, TypeError, OverflowError):
            return False
        return out.getvalue() == data


@cache
def default_codec() -> Codec:
    """The codec over the schemas shipped with this package, parsed once per process."""
    return Codec()


def jsonable(value: Any) -> Any:
    """A decoded record as JSON-friendly data: bytes become 0x-hex, tuples lists."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [jsonable(v) for v in value]
    return value
