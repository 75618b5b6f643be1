"""Typed event classes from the Avro schemas: `schemas/events.py` is this module's output.

`render` turns every record in `schemas/avro/` into one frozen dataclass with the record's
fields in schema order, its doc as the class docstring and each field's doc above it, and
its defaults as defaults (keyword-only, so a default may sit before a required field as
in the schema). `lattice schemas generate` writes the file; a test renders again and fails
on any difference, so the classes can never drift from the schemas.

Types:

    boolean -> bool             int, long -> int         float, double -> float
    string -> str               bytes -> bytes           bytes + lattice.uint256 -> int
    enum -> a Literal alias     array -> tuple[T, ...]   map -> Mapping[str, T]
    ["null", T] -> T | None     a record -> its class

Other unions and `fixed` are refused: no schema uses them, and a generator that guessed
would make the typed layer lie.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.codec import AVRO_DIR, UINT256_LOGICAL

EVENTS_FILE = Path(__file__).parent / "events.py"
WIDTH = 100
_PRIMITIVES = {
    "boolean": "bool",
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "string": "str",
    "bytes": "bytes",
}


class GenerateError(ValueError):
    """A schema the generator cannot map to a type, with the place and the reason."""


@dataclass(frozen=True)
class _Field:
    name: str
    annotation: str
    doc: str
    default: str | None  # Python source of the default, None when required
    to_avro: str  # expression over `self.<name>`
    from_avro: str | None  # expression over `value[...]`; None when the value is kept


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _full(name: str, namespace: str) -> str:
    return name if "." in name else f"{namespace}.{name}"


class _Schemas:
    """Every record and enum of the schema directory, by full name."""

    def __init__(self, avro_dir: Path) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.enums: dict[str, list[str]] = {}
        self.enum_docs: dict[str, str] = {}
        for path in sorted(avro_dir.glob("*.avsc")):
            schema = json.loads(path.read_text())
            if schema.get("type") != "record":
                raise GenerateError(f"{path.name}: the top level must be a record")
            self.records[f"{schema['namespace']}.{schema['name']}"] = schema
            for item in schema["fields"]:
                self._collect_enums(item["type"], schema["namespace"])

    def _collect_enums(self, kind: Any, namespace: str) -> None:
        if isinstance(kind, list):
            for branch in kind:
                self._collect_enums(branch, namespace)
        elif isinstance(kind, dict):
            if kind["type"] == "enum":
                full = _full(kind["name"], kind.get("namespace", namespace))
                self.enums[full] = list(kind["symbols"])
                self.enum_docs[full] = kind.get("doc", "")
            elif kind["type"] == "array":
                self._collect_enums(kind["items"], namespace)
            elif kind["type"] == "map":
                self._collect_enums(kind["values"], namespace)


def _typed(schemas: _Schemas, kind: Any, namespace: str, where: str) -> tuple[str, str | None]:
    """(annotation, conversion from Avro with `{0}` for the value) of a field type; the
    conversion is None where the decoded value is already the typed one."""
    if isinstance(kind, str):
        if kind in _PRIMITIVES:
            return _PRIMITIVES[kind], None
        full = _full(kind, namespace)
        if full in schemas.records:
            return _short(full), f"{_short(full)}.from_avro({{0}})"
        if full in schemas.enums:
            return _short(full), None
        raise GenerateError(f"{where}: unknown type {kind!r}")
    if isinstance(kind, list):
        if len(kind) != 2 or kind[0] != "null":
            raise GenerateError(f"{where}: only [null, T] unions are supported, got {kind}")
        inner, convert = _typed(schemas, kind[1], namespace, where)
        if convert is None:
            return f"{inner} | None", None
        return f"{inner} | None", f"None if {{0}} is None else {convert}"
    kind_name = kind["type"]
    if kind_name == "bytes" and kind.get("logicalType") == UINT256_LOGICAL:
        return "int", None
    if kind_name in _PRIMITIVES:
        return _PRIMITIVES[kind_name], None
    if kind_name == "enum":
        return _short(_full(kind["name"], kind.get("namespace", namespace))), None
    if kind_name == "array":
        inner, convert = _typed(schemas, kind["items"], namespace, where)
        if convert is None:
            return f"tuple[{inner}, ...]", "tuple({0})"
        return f"tuple[{inner}, ...]", f"tuple({convert.format('x')} for x in {{0}})"
    if kind_name == "map":
        inner, convert = _typed(schemas, kind["values"], namespace, where)
        if convert is not None:
            raise GenerateError(f"{where}: maps of records are not supported")
        return f"Mapping[str, {inner}]", None
    raise GenerateError(f"{where}: unsupported type {kind_name!r}")


def _to_avro(schemas: _Schemas, kind: Any, namespace: str, expr: str) -> str:
    """The expression that turns a typed field value back into what fastavro writes."""
    if isinstance(kind, str):
        if _full(kind, namespace) in schemas.records:
            return f"{expr}.to_avro()"
        return expr
    if isinstance(kind, list):
        inner = _to_avro(schemas, kind[1], namespace, expr)
        return expr if inner == expr else f"None if {expr} is None else {inner}"
    if kind["type"] == "array":  # fastavro writes a tuple as it does a list
        inner = _to_avro(schemas, kind["items"], namespace, "x")
        return expr if inner == "x" else f"[{inner} for x in {expr}]"
    return expr  # maps: fastavro writes any mapping


def _default(value: Any, where: str) -> str:
    if value is None:
        return "None"
    if isinstance(value, dict):
        if value:
            raise GenerateError(f"{where}: only empty map defaults are supported")
        return "field(default_factory=dict)"
    if isinstance(value, list):
        if value:
            raise GenerateError(f"{where}: only empty array defaults are supported")
        return "()"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _fields(schemas: _Schemas, full_name: str) -> list[_Field]:
    schema = schemas.records[full_name]
    namespace = schema["namespace"]
    out = []
    for item in schema["fields"]:
        where = f"{full_name}.{item['name']}"
        annotation, convert = _typed(schemas, item["type"], namespace, where)
        out.append(
            _Field(
                name=item["name"],
                annotation=annotation,
                doc=item.get("doc", ""),
                default=_default(item["default"], where) if "default" in item else None,
                to_avro=_to_avro(schemas, item["type"], namespace, f"self.{item['name']}"),
                from_avro=None if convert is None else convert.format(f'value["{item["name"]}"]'),
            )
        )
    return out


def _comment(text: str, indent: str) -> Iterator[str]:
    for line in textwrap.wrap(text, WIDTH - len(indent) - 3):
        yield f"{indent}#: {line}"


def _docstring(text: str, indent: str) -> Iterator[str]:
    lines = textwrap.wrap(text or "(undocumented)", WIDTH - len(indent) - 6)
    if len(lines) == 1:
        yield f'{indent}"""{lines[0]}"""'
        return
    yield f'{indent}"""{lines[0]}'
    for line in lines[1:]:
        yield f"{indent}{line}"
    yield f'{indent}"""'


def _class(schemas: _Schemas, full_name: str) -> Iterator[str]:
    schema = schemas.records[full_name]
    name = schema["name"]
    fields = _fields(schemas, full_name)
    yield "@dataclass(frozen=True, kw_only=True)"
    yield f"class {name}(Event):"
    yield from _docstring(schema.get("doc", ""), "    ")
    yield ""
    yield f'    SCHEMA: ClassVar[str] = "{full_name}"'
    for item in fields:
        yield ""
        yield from _comment(item.doc, "    ")
        default = f" = {item.default}" if item.default is not None else ""
        yield f"    {item.name}: {item.annotation}{default}"
    yield ""
    yield "    def to_avro(self) -> dict[str, Any]:"
    nested = [item for item in fields if item.to_avro != f"self.{item.name}"]
    if not nested:
        yield "        return dict(self.__dict__)"
    else:
        yield "        value = dict(self.__dict__)"
        for item in nested:
            yield f'        value["{item.name}"] = {item.to_avro}'
        yield "        return value"
    yield ""
    yield "    @classmethod"
    yield f"    def from_avro(cls, value: Mapping[str, Any]) -> {name}:"
    converted = [item for item in fields if item.from_avro is not None]
    if not converted:
        yield "        return build(cls, value, {})"
        return
    yield "        converted = {"
    for item in converted:
        yield f'            "{item.name}": {item.from_avro},'
    yield "        }"
    yield "        return build(cls, value, converted)"


HEADER = '''"""Typed Lattice events: one frozen dataclass per Avro record in `schemas/avro/`.

Generated by `lattice schemas generate` (`schemas/generate.py`) from the schemas; do not
edit by hand: change the `.avsc` file, then generate. A test fails when this file and the
schemas differ in any name, type, default or doc.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from schemas.record import Event, build
'''


def render(avro_dir: Path = AVRO_DIR) -> str:
    """The source of `schemas/events.py` for the schemas in `avro_dir`."""
    schemas = _Schemas(avro_dir)
    lines = [HEADER.rstrip("\n")]
    for full in sorted(schemas.enums):
        symbols = ", ".join(f'"{s}"' for s in schemas.enums[full])
        lines.append("")
        lines.extend(_comment(schemas.enum_docs[full], ""))
        lines.append(f"{_short(full)} = Literal[{symbols}]")
    for full in sorted(schemas.records):
        lines += ["", ""]
        lines.extend(_class(schemas, full))
    lines += ["", ""]
    lines.append("#: Every event class by the full name of its schema.")
    lines.append("EVENT_TYPES: dict[str, type[Event]] = {")
    for full in sorted(schemas.records):
        lines.append(f'    "{full}": {_short(full)},')
    lines.append("}")
    lines.append("")
    names = sorted([_short(f) for f in schemas.records] + [_short(f) for f in schemas.enums])
    lines.append("__all__ = [")
    lines.extend(f'    "{n}",' for n in ["EVENT_TYPES", *names])
    lines.append("]")
    return "\n".join(lines) + "\n"


def write(path: Path = EVENTS_FILE) -> bool:
    """Write the generated module; True if it changed."""
    source = render()
    if path.exists() and path.read_text() == source:
        return False
    path.write_text(source)
    return True
