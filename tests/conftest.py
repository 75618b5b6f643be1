"""Shared fixtures: one real embedded broker for the whole session, fresh topics per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.topics import TopicSpec


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture
def make_topic(broker: EmbeddedBroker) -> Callable[..., TopicSpec]:
    """Create a uniquely named topic carrying the given schema on the session broker."""

    def make(
        schema: str = "lattice.tx.TransactionSubmitted", partitions: int = 3, **kw: object
    ) -> TopicSpec:
        spec = TopicSpec(f"test.{uuid.uuid4().hex[:12]}", schema, "test key", partitions, **kw)  # type: ignore[arg-type]
        ensure_topics(broker.bootstrap, [spec])
        return spec

    return make
