"""Schema evolution: every version ever shipped stays readable.

Each schema version that reaches `main` is frozen in `history/` as a self-contained
(expanded) copy named `<full name>.<fingerprint>.avsc`. The rule is full transitive
backward compatibility: the current schema of a name must be able to read records
written by *every* frozen version of it, by the Avro specification's resolution rules.

The test suite enforces both halves: a schema changed without being frozen fails (run
`lattice schemas freeze`), and a change that breaks reading older records fails, naming
the field. In practice: add fields only with defaults, never change a field's type except
by Avro's promotions, never remove an enum symbol, and rename only through aliases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.codec import HISTORY_DIR, Codec, SchemaInfo, expanded_json

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
# Avro's allowed promotions, writer type -> reader types that accept it.
PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return str(schema["type"])
    return str(schema)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    """Follow a by-name reference to the named type it means."""
    if isinstance(schema, str) and schema not in PRIMITIVES:
        return named[schema]
    if isinstance(schema, dict) and schema.get("type") in PRIMITIVES:
        return schema["type"]  # {"type": "bytes", "logicalType": ...} reads like "bytes"
    return schema


def _collect(schema: Any, named: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, named)
    elif isinstance(schema, dict):
        kind = schema["type"]
        if kind in ("record", "enum", "fixed"):
            named[schema["name"]] = schema
        if kind == "record":
            for field in schema["fields"]:
                _collect(field["type"], named)
        elif kind == "array":
            _collect(schema["items"], named)
        elif kind == "map":
            _collect(schema["values"], named)


def incompatibilities(writer: Any, reader: Any) -> list[str]:
    """Why `reader` cannot read every record `writer` can write; empty if it can."""
    wnamed: dict[str, Any] = {}
    rnamed: dict[str, Any] = {}
    _collect(writer, wnamed)
    _collect(reader, rnamed)
    problems: list[str] = []
    _check(writer, reader, wnamed, rnamed, "", problems, set())
    return problems


def _check(
    w: Any,
    r: Any,
    wn: dict[str, Any],
    rn: dict[str, Any],
    path: str,
    out: list[str],
    seen: set[tuple[str, str]],
) -> None:
    w, r = _resolve(w, wn), _resolve(r, rn)
    wk, rk = _kind(w), _kind(r)
    where = path or "<root>"
    if wk == "union":
        # Every branch the writer may have chosen must be readable.
        for branch in w:
            _check(branch, r, wn, rn, path, out, seen)
        return
    if rk == "union":
        if not any(not _probe(w, branch, wn, rn) for branch in r):
            out.append(f"{where}: writer type {wk} matches no branch of the reader's union")
        return
    if wk in PRIMITIVES or rk in PRIMITIVES:
        if wk != rk and rk not in PROMOTIONS.get(wk, set()):
            out.append(f"{where}: writer type {wk} cannot be read as {rk}")
        return
    if wk != rk:
        out.append(f"{where}: writer type {wk} cannot be read as {rk}")
        return
    if wk in ("record", "enum", "fixed") and _short(w["name"]) != _short(r["name"]):
        out.append(f"{where}: named type {w['name']} cannot be read as {r['name']}")
        return
    if wk == "record":
        key = (w["name"], r["name"])
        if key in seen:  # recursive types
            return
        seen = seen | {key}
        wfields = {f["name"]: f for f in w["fields"]}
        for field in r["fields"]:
            fpath = f"{path}.{field['name']}" if path else field["name"]
            source = wfields.get(field["name"])
            if source is None:
                for alias in field.get("aliases", []):
                    source = wfields.get(alias)
                    if source is not None:
                        break
            if source is None:
                if "default" not in field:
                    out.append(f"{fpath}: new field without a default")
                continue
            _check(source["type"], field["type"], wn, rn, fpath, out, seen)
    elif wk == "enum":
        missing = [s for s in w["symbols"] if s not in r["symbols"]]
        if missing and "default" not in r:
            out.append(f"{where}: enum symbols {missing} removed with no reader default")
    elif wk == "fixed":
        if w["size"] != r["size"]:
            out.append(f"{where}: fixed size {w['size']} cannot be read as {r['size']}")
    elif wk == "array":
        _check(w["items"], r["items"], wn, rn, f"{path}[]", out, seen)
    elif wk == "map":
        _check(w["values"], r["values"], wn, rn, f"{path}{{}}", out, seen)


def _probe(w: Any, r: Any, wn: dict[str, Any], rn: dict[str, Any]) -> list[str]:
    found: list[str] = []
    _check(w, r, wn, rn, "", found, set())
    return found


def history_path(info: SchemaInfo, history_dir: Path = HISTORY_DIR) -> Path:
    return history_dir / f"{info.name}.{info.fingerprint_hex}.avsc"


def check(codec: Codec, history_dir: Path = HISTORY_DIR) -> list[str]:
    """Problems with the current schemas against the frozen history; empty when fine."""
    problems: list[str] = []
    for name, info in sorted(codec.current.items()):
        if not history_path(info, history_dir).exists():
            problems.append(
                f"{name}: version {info.fingerprint_hex} is not frozen"
                " (run `lattice schemas freeze`)"
            )
    for old in codec.by_fingerprint.values():
        current = codec.current.get(old.name)
        if current is None:
            problems.append(
                f"{old.name}: frozen version {old.fingerprint_hex} has no current schema"
            )
            continue
        for problem in incompatibilities(old.parsed, current.parsed):
            problems.append(f"{old.name} {old.fingerprint_hex} -> current: {problem}")
    return problems


def freeze(codec: Codec, history_dir: Path = HISTORY_DIR) -> list[Path]:
    """Freeze every current version not yet in the history; returns the files written.

    Refuses (raises) when a current schema cannot read an older version, so that a
    breaking change is never frozen into the history.
    """
    breaking = [p for p in check(codec, history_dir) if "not frozen" not in p]
    if breaking:
        raise ValueError("refusing to freeze incompatible schemas:\n  " + "\n  ".join(breaking))
    written = []
    history_dir.mkdir(parents=True, exist_ok=True)
    for info in codec.current.values():
        path = history_path(info, history_dir)
        if not path.exists():
            path.write_text(expanded_json(info))
            written.append(path)
    return written
