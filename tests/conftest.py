"""Shared fixtures: one real embedded broker for the whole session, fresh topics per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT-2 and its BPE tokenizer, built locally (tests/tiny_models.py)."""
    from tests.tiny_models import build_tiny_gpt2

    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_store(tiny_gpt2: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """(blockstore, manifest) of the tiny GPT-2 imported through the real importer."""
    from processors.compute.models import import_model
    from processors.market.content import Blockstore

    store = Blockstore(tmp_path_factory.mktemp("blockstore"))
    return store, import_model(tiny_gpt2, "tiny-gpt2", store)
