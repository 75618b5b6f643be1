"""Hypothesis strategies that generate records for any of Lattice's Avro schemas."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from schemas.codec import UINT256_LOGICAL, SchemaInfo

_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "bytes": st.binary(max_size=48),
    "string": st.text(max_size=16),
}


def records(info: SchemaInfo) -> st.SearchStrategy[dict[str, Any]]:
    named = info.parsed["__named_schemas"]
    return _strategy(info.parsed, named)  # type: ignore[no-any-return]


def _strategy(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    if isinstance(schema, list):
        return st.one_of([_strategy(branch, named) for branch in schema])
    if isinstance(schema, str):
        return _PRIMITIVES[schema] if schema in _PRIMITIVES else _strategy(named[schema], named)
    kind = schema["type"]
    if schema.get("logicalType") == UINT256_LOGICAL:
        return st.integers(0, 2**256 - 1)
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind == "record":
        return st.fixed_dictionaries(
            {f["name"]: _strategy(f["type"], named) for f in schema["fields"]}
        )
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(_strategy(schema["items"], named), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), _strategy(schema["values"], named), max_size=3)
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    raise NotImplementedError(kind)
