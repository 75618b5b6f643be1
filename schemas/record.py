"""The base of the typed event classes (`schemas.events`, generated from the schemas).

An event is a frozen dataclass whose fields are its Avro record's fields, in the schema's
order, with Python types (see `schemas.generate` for the mapping). `to_avro` gives the
plain value fastavro writes (the instance's fields, nested events as their own values;
arrays stay tuples, which fastavro writes alike); `from_avro` takes the value fastavro read
back. The codec
(`schemas.codec.Codec.encode_event` / `decode_event`) goes through them, so producers and
consumers never see the dictionaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

E = TypeVar("E", bound="Event")


class Event:
    """One Avro record as a typed, immutable value."""

    __slots__ = ()
    #: Full name of the Avro record this class is generated from.
    SCHEMA: ClassVar[str]

    def to_avro(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_avro(cls: type[E], value: Mapping[str, Any]) -> E:
        raise NotImplementedError


class Encoded:
    """An event as the codec encoded it (`SCHEMA`: its schema's full name), which the codec
    passes on as it is: a processor that keeps outputs in its store until they are due
    (execution keeps a block's until the block is final) need not decode them only to have
    them encoded again."""

    __slots__ = ("SCHEMA", "value")

    def __init__(self, schema: str, value: bytes) -> None:
        self.SCHEMA = schema
        self.value = value


def build(cls: type[E], value: Mapping[str, Any], converted: Mapping[str, Any]) -> E:
    """An instance of `cls` from a decoded record, with `converted` replacing the fields that
    need converting (nested records, arrays as tuples).

    Decoding is on every consumer's path: filling the instance's dictionary in one step is
    several times faster than the frozen dataclass's `__init__`, which sets each field
    through `object.__setattr__`. The record is the codec's, so its fields and types are
    the schema's already.
    """
    event = object.__new__(cls)
    fields = event.__dict__
    fields.update(value)
    fields.update(converted)
    return event
