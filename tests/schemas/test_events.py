"""The typed event classes: generated from the schemas, in step with them, and round-trip."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from schemas import events
from schemas.codec import AVRO_DIR, CodecError, default_codec, jsonable
from schemas.events import EVENT_TYPES, JobSubmitted, Position
from schemas.generate import EVENTS_FILE, GenerateError, render
from tests.avro_strategies import records

CODEC = default_codec()


def test_the_generated_module_is_what_the_schemas_give() -> None:
    """Any drift (a field, type, default or doc changed in a schema and not regenerated, or
    the module edited by hand) fails here: run `lattice schemas generate`."""
    assert EVENTS_FILE.read_text() == render(), "schemas/events.py is stale"


def test_one_class_per_schema_with_the_schemas_fields_in_order() -> None:
    assert sorted(EVENT_TYPES) == CODEC.names()
    for name, cls in EVENT_TYPES.items():
        schema = json.loads((AVRO_DIR / f"{name}.avsc").read_text())
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        assert [f.name for f in fields] == [f["name"] for f in schema["fields"]], name
        assert name == cls.SCHEMA
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        for spec, item in zip(schema["fields"], fields, strict=True):
            has_default = item.default is not dataclasses.MISSING or (
                item.default_factory is not dataclasses.MISSING
            )
            assert has_default == ("default" in spec), f"{name}.{item.name}"


@pytest.mark.parametrize("name", CODEC.names())
def test_every_event_round_trips_through_the_codec(name: str) -> None:
    info = CODEC.schema(name)
    cls = EVENT_TYPES[name]
    hints = typing.get_type_hints(cls)

    @settings(max_examples=40, deadline=None)
    @given(records(info))
    def round_trip(record: dict[str, Any]) -> None:
        data = CODEC.encode(name, record)
        event = CODEC.decode_event(data)
        assert type(event) is cls
        assert jsonable(event.to_avro()) == jsonable(CODEC.decode(data).record)
        assert CODEC.encode_event(event) == data
        again = CODEC.decode_as(CODEC.encode_event(event), cls)
        assert again == event
        for item in dataclasses.fields(event):  # type: ignore[arg-type]
            _check_type(getattr(event, item.name), hints[item.name], f"{name}.{item.name}")

    round_trip()


def _check_type(value: Any, hint: Any, where: str) -> None:
    """The decoded value is of the annotated type (arrays are tuples, records classes)."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        assert value in typing.get_args(hint), where
    elif origin is tuple:
        assert isinstance(value, tuple), where
        for item in value:
            _check_type(item, typing.get_args(hint)[0], where)
    elif origin in (typing.Union, types.UnionType):
        if value is not None:
            inner = next(a for a in typing.get_args(hint) if a is not type(None))
            _check_type(value, inner, where)
    elif origin is not None:  # Mapping[str, str]
        assert isinstance(value, dict), where
    elif hint is float:
        assert isinstance(value, float), where
    else:
        assert isinstance(value, hint), where


def test_constructed_events_take_their_defaults_and_refuse_positional_fields() -> None:
    position = Position(topic="t", partition=0, offset=1)
    with pytest.raises(TypeError):
        Position("t", 0, 1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        position.offset = 2  # type: ignore[misc]
    job = JobSubmitted(
        job_id=b"\1" * 32,
        requester=b"\2" * 20,
        kind="INFERENCE",
        model_id="m",
        input_cid="c",
        required_vram_bytes=1,
        max_price_wei=10**30,
        deadline_ms=2,
        nonce=3,
        submitted_at_ms=4,
        signature=b"\3" * 65,
    )
    assert job.params == {} and job.batch_size is None and job.input is None
    assert CODEC.decode_as(CODEC.encode_event(job), JobSubmitted) == job


def test_decoding_as_the_wrong_event_is_a_codec_error() -> None:
    data = CODEC.encode_event(Position(topic="t", partition=0, offset=1))
    with pytest.raises(CodecError, match=r"expected a lattice\.jobs\.JobSubmitted"):
        CODEC.decode_as(data, JobSubmitted)


def test_the_generator_refuses_what_it_cannot_type(tmp_path: Path) -> None:
    schema = {
        "type": "record",
        "name": "Odd",
        "namespace": "lattice.test",
        "fields": [{"name": "either", "type": ["int", "string"]}],
    }
    (tmp_path / "lattice.test.Odd.avsc").write_text(json.dumps(schema))
    with pytest.raises(GenerateError, match=r"lattice.test.Odd.either: only \[null, T\] unions"):
        render(tmp_path)


def test_every_literal_alias_lists_its_enum_symbols() -> None:
    assert typing.get_args(events.JobKind) == ("INFERENCE", "TRAINING")
    assert typing.get_args(events.Outcome) == ("ACCEPTED", "REJECTED", "INCONCLUSIVE")
