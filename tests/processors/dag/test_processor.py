"""The DAG processor against the real embedded broker and real rocksdict stores."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.dag.processor import PROPOSED, DagConfig, DagProcessor, virtual_topic
from processors.state import RocksStore
from schemas.codec import default_codec
from schemas.events import BlockOrdered, BlockProposed
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer
from streams.topics import TopicSpec
from tests.processors.dag.sim import GENESIS, simulate
from tests.processors.harness import CrashPoint, crash, read_all, run_to_end

pytestmark = pytest.mark.broker
CONFIG = DagConfig(GENESIS, k=3, finality_depth=4)


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    """A broker of the test's own: the proposed topic is one shared partition."""
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, [PROPOSED])
        yield broker


def publish(bootstrap: str, blocks: list[BlockProposed]) -> None:
    producer = Producer(bootstrap)
    for block in blocks:
        producer.send(
            PROPOSED, block, key="0x" + block.proposer.hex(), timestamp_ms=block.timestamp_ms
        )
    producer.close()


def output_topic(bootstrap: str) -> TopicSpec:
    spec = TopicSpec(f"test.ordered.{uuid.uuid4().hex[:8]}", "lattice.blocks.BlockOrdered", "-", 1)
    ensure_topics(bootstrap, [spec, virtual_topic(spec)])
    return spec


def both(bootstrap: str, spec: TopicSpec) -> tuple[list[bytes], list[bytes]]:
    """What a processor writing to `spec` sent: the ordered topic's and the virtual's."""
    return read_all(bootstrap, spec.name), read_all(bootstrap, virtual_topic(spec).name)


def ordered(bootstrap: str, spec: TopicSpec) -> list[tuple[bytes, BlockOrdered]]:
    raws = read_all(bootstrap, spec.name)
    codec = default_codec()
    return [(raw, codec.decode_as(raw, BlockOrdered)) for raw in raws]


def processor(name: str, spec: TopicSpec) -> DagProcessor:
    """A DAG processor committing every 8 blocks: a crash has commits to fall between."""
    made = DagProcessor(CONFIG, name=name, output=spec)
    made.pace = dataclasses.replace(made.pace, batch=8)
    return made


def run(bootstrap: str, path: Path, name: str, spec: TopicSpec) -> None:
    store = RocksStore(path)
    run_to_end(processor(name, spec), store, bootstrap)
    store.close()


def test_two_replicas_emit_byte_identical_topics(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    blocks = simulate(4, 40, seed=11)
    publish(own_broker.bootstrap, blocks)
    specs = [output_topic(own_broker.bootstrap) for _ in range(2)]
    for name, spec in zip(("replica-a", "replica-b"), specs, strict=True):
        run(own_broker.bootstrap, tmp_path / name, name, spec)
    a = ordered(own_broker.bootstrap, specs[0])
    assert len(a) > 20
    assert both(own_broker.bootstrap, specs[0]) == both(own_broker.bootstrap, specs[1])
    assert [v.chain_index for _, v in a] == list(range(1, len(a) + 1))
    assert any(len(v.mergeset_blues) > 1 for _, v in a)


@pytest.mark.parametrize(
    ("point", "after"), [("before-commit", 3), ("mid-send", 10), ("before-acks", 0)]
)
def test_a_crash_anywhere_leaves_no_gap_and_no_duplicate(
    own_broker: EmbeddedBroker, tmp_path: Path, point: CrashPoint, after: int
) -> None:
    blocks = simulate(3, 50, seed=12)
    publish(own_broker.bootstrap, blocks)
    reference = output_topic(own_broker.bootstrap)
    run(own_broker.bootstrap, tmp_path / "ref", "ref", reference)
    expected = both(own_broker.bootstrap, reference)

    spec = output_topic(own_broker.bootstrap)
    crash(processor("s", spec), RocksStore(tmp_path / "s"), own_broker.bootstrap, point, after)
    run(own_broker.bootstrap, tmp_path / "s", "s", spec)
    assert both(own_broker.bootstrap, spec) == expected


def test_a_lost_store_rebuilt_from_the_topic_emits_nothing_twice(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    blocks = simulate(3, 50, seed=13)
    publish(own_broker.bootstrap, blocks[:60])
    reference = output_topic(own_broker.bootstrap)
    spec = output_topic(own_broker.bootstrap)
    run(own_broker.bootstrap, tmp_path / "first", "s", spec)
    publish(own_broker.bootstrap, blocks[60:])
    run(own_broker.bootstrap, tmp_path / "rebuilt", "s", spec)  # the first store is gone
    run(own_broker.bootstrap, tmp_path / "ref", "ref", reference)
    assert both(own_broker.bootstrap, spec) == both(own_broker.bootstrap, reference)


def test_a_store_from_before_the_virtual_chain_is_refused_with_the_way_out(
    tmp_path: Path,
) -> None:
    """A store that ordered blocks before the virtual chain's changes were sent cannot
    start them mid-history (execution follows them from the first): it says so."""
    import struct

    block = simulate(1, 5, seed=3)[0]
    store = RocksStore(tmp_path / "old")
    meta = struct.pack(">iqq", 0, 0, 1_700_000_000_000)
    store.put(b"block/%016d" % 0, meta + default_codec().encode_event(block))
    store.commit({})
    with pytest.raises(RuntimeError, match="delete the store to rebuild it"):
        processor("old", output_topic_spec()).restore(store)
    store.close()
    fresh = RocksStore(tmp_path / "new")
    processor("new", output_topic_spec()).restore(fresh)
    fresh.commit({})
    assert fresh.get(b"virtual/from-start") == b"1"
    fresh.close()


def output_topic_spec() -> TopicSpec:
    return TopicSpec("test.ordered.offline", "lattice.blocks.BlockOrdered", "-", 1)
