"""The interfaces between Lattice's parts, named and documented in one place.

Implementations live beside the code that needs them (`streams.kafka.Producer` is the
Kafka `RecordSink`); consumers of an interface depend on the protocol, so tests of pure
logic can pass an in-memory twin and integration tests pass the real thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any, Protocol

from streams.kafka import Delivered
from streams.topics import TopicSpec


class RecordSink(Protocol):
    """Where events go: a record is sent to a catalogue topic under a key.

    `send` validates and encodes at once (raising `schemas.CodecError` without sending
    anything) and returns a future that resolves when the record is durably acknowledged,
    or fails with `streams.kafka.DeliveryError`.
    """

    def send(
        self,
        topic: TopicSpec,
        value: Mapping[str, Any],
        *,
        key: str | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> Future[Delivered]: ...
