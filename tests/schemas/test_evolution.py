from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest

from schemas import evolution
from schemas.codec import AVRO_DIR, MARKER, Codec, default_codec, schema_info
from schemas.evolution import incompatibilities

CODEC = default_codec()


def test_every_current_schema_is_frozen_and_reads_every_frozen_version() -> None:
    """Fails when a schema changed without `lattice schemas freeze`, or when a change
    makes records written by an earlier version unreadable."""
    assert evolution.check(CODEC) == []


def record(fields: list[dict[str, Any]], name: str = "T") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "t", "fields": fields}


BASE = record([{"name": "a", "type": "long"}, {"name": "b", "type": "string"}])


@pytest.mark.parametrize(
    ("reader", "problem"),
    [
        (
            record(
                [
                    {"name": "a", "type": "long"},
                    {"name": "b", "type": "string"},
                    {"name": "c", "type": "int"},
                ]
            ),
            "c: new field without a default",
        ),
        (
            record([{"name": "a", "type": "int"}, {"name": "b", "type": "string"}]),
            "a: writer type long cannot be read as int",
        ),
        (
            record([{"name": "a", "type": "long"}, {"name": "b", "type": "boolean"}]),
            "b: writer type string cannot be read as boolean",
        ),
        (
            record([{"name": "a", "type": ["null", "int"]}, {"name": "b", "type": "string"}]),
            "a: writer type long matches no branch",
        ),
    ],
)
def test_breaking_changes_are_named(reader: dict[str, Any], problem: str) -> None:
    found = incompatibilities(BASE, reader)
    assert any(problem in p for p in found), found


@pytest.mark.parametrize(
    "reader",
    [
        record([{"name": "a", "type": "long"}]),  # dropped field: ignored
        record([{"name": "a", "type": "double"}, {"name": "b", "type": "bytes"}]),  # promotions
        record(
            [
                {"name": "a", "type": "long"},
                {"name": "b", "type": "string"},
                {"name": "c", "type": ["null", "int"], "default": None},
            ]
        ),
        record([{"name": "a", "type": ["null", "long"]}, {"name": "b", "type": "string"}]),
        record([{"name": "z", "type": "long", "aliases": ["a"]}, {"name": "b", "type": "string"}]),
    ],
)
def test_compatible_changes_pass(reader: dict[str, Any]) -> None:
    assert incompatibilities(BASE, reader) == []


def test_enum_symbol_removal_is_breaking() -> None:
    old = record([{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X", "Y"]}}])
    new = record([{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["X"]}}])
    assert incompatibilities(old, new)
    assert incompatibilities(new, old) == []


def _copy_schemas(tmp_path: Path) -> tuple[Path, Path]:
    avro, history = tmp_path / "avro", tmp_path / "history"
    shutil.copytree(AVRO_DIR, avro)
    history.mkdir()
    return avro, history


def _edit(avro: Path, name: str, change: Any) -> None:
    path = avro / f"{name}.avsc"
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema))


def test_compatible_evolution_reads_old_records(tmp_path: Path) -> None:
    """Freeze, add a defaulted field, freeze again: records of v1 decode under v2."""
    avro, history = _copy_schemas(tmp_path)
    name = "lattice.state.Checkpoint"
    v1 = Codec(avro, history)
    evolution.freeze(v1, history)
    old = {
        "height": 7,
        "block_hash": b"h" * 32,
        "state_root": b"r" * 32,
        "signer": b"s" * 20,
        "signature": b"x" * 65,
        "replica": "a",
        "cause": {"topic": "t", "partition": 0, "offset": 1},
    }
    written = v1.encode(name, old)

    _edit(
        avro,
        name,
        lambda s: s["fields"].append({"name": "epoch", "type": "long", "default": 0, "doc": "new"}),
    )
    v2 = Codec(avro, history)
    assert any("not frozen" in p for p in evolution.check(v2, history))
    evolution.freeze(v2, history)
    v2 = Codec(avro, history)
    assert evolution.check(v2, history) == []
    decoded = v2.decode(written)
    assert decoded.record == {**old, "epoch": 0}
    assert decoded.writer_fingerprint != v2.schema(name).fingerprint


def test_breaking_change_fails_the_check_and_is_never_frozen(tmp_path: Path) -> None:
    avro, history = _copy_schemas(tmp_path)
    evolution.freeze(Codec(avro, history), history)
    _edit(
        avro,
        "lattice.state.Checkpoint",
        lambda s: s["fields"].append({"name": "epoch", "type": "long", "doc": "no default"}),
    )
    broken = Codec(avro, history)
    assert any("epoch: new field without a default" in p for p in evolution.check(broken, history))
    with pytest.raises(ValueError, match="refusing to freeze"):
        evolution.freeze(broken, history)


def test_frozen_files_are_self_contained() -> None:
    for path in sorted(evolution.HISTORY_DIR.glob("*.avsc")):
        info = schema_info(fastavro.parse_schema(json.loads(path.read_text())))
        assert path.name == f"{info.name}.{info.fingerprint_hex}.avsc"


def test_decoding_uses_the_writer_schema_recorded_in_the_header(tmp_path: Path) -> None:
    """A record written with an older layout is decoded with that layout, not the new one."""
    avro, history = _copy_schemas(tmp_path)
    name = "lattice.common.Position"
    evolution.freeze(Codec(avro, history), history)
    _edit(
        avro,
        name,
        lambda s: s["fields"].insert(
            0, {"name": "cluster", "type": "string", "default": "main", "doc": "new"}
        ),
    )
    codec = Codec(avro, history)
    old_schema = next(
        i
        for i in codec.by_fingerprint.values()
        if i.name == name and i.fingerprint != codec.schema(name).fingerprint
    )
    body = io.BytesIO()
    fastavro.schemaless_writer(
        body, copy.deepcopy(old_schema.parsed), {"topic": "x", "partition": 1, "offset": 2}
    )
    data = MARKER + old_schema.fingerprint.to_bytes(8, "little") + body.getvalue()
    assert codec.decode(data).record == {
        "cluster": "main",
        "topic": "x",
        "partition": 1,
        "offset": 2,
    }
