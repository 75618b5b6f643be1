"""The DAG processor against the real embedded broker and real rocksdict stores."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from processors.dag.processor import PROPOSED, DagConfig, DagProcessor
from processors.runtime import consume
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer, Reader, from_beginning
from streams.topics import TopicSpec
from tests.processors.dag.sim import GENESIS, simulate

pytestmark = pytest.mark.broker
CONFIG = DagConfig(GENESIS, k=3, finality_depth=4)


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    """A broker of the test's own: the proposed topic is one shared partition."""
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, [PROPOSED])
        yield broker


def publish(bootstrap: str, blocks: list[dict[str, Any]]) -> None:
    producer = Producer(bootstrap)
    for block in blocks:
        producer.send(
            PROPOSED, block, key="0x" + block["proposer"].hex(), timestamp_ms=block["timestamp_ms"]
        )
    producer.close()


def output_topic(bootstrap: str) -> TopicSpec:
    spec = TopicSpec(f"test.ordered.{uuid.uuid4().hex[:8]}", "lattice.blocks.BlockOrdered", "-", 1)
    ensure_topics(bootstrap, [spec])
    return spec


def ordered(bootstrap: str, spec: TopicSpec) -> list[tuple[bytes, dict[str, Any]]]:
    reader = Reader(bootstrap)
    try:
        return [
            (m.value(), reader.decode(m).value) for m in reader.read(from_beginning(spec.name, [0]))
        ]
    finally:
        reader.close()


def run_until_idle(processor: DagProcessor, bootstrap: str, group: str, expect_offset: int) -> None:
    stop = threading.Event()

    def idle() -> None:
        stored = processor.state.offset(PROPOSED.name, 0)
        if stored is not None and stored >= expect_offset:
            stop.set()

    thread = threading.Thread(
        target=consume,
        args=(
            bootstrap,
            group,
            {(PROPOSED.name, 0): processor.resume_from()},
            processor.handle,
            stop,
            idle,
        ),
    )
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "processor did not reach the end of the input"


def test_two_replicas_emit_byte_identical_topics(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    blocks = simulate(4, 40, seed=11)
    publish(own_broker.bootstrap, blocks)
    outputs = []
    for name in ("replica-a", "replica-b"):
        spec = output_topic(own_broker.bootstrap)
        processor = DagProcessor(
            own_broker.bootstrap, tmp_path / name, CONFIG, group_id=name, output=spec
        )
        run_until_idle(processor, own_broker.bootstrap, name, len(blocks) - 1)
        processor.close()
        outputs.append(ordered(own_broker.bootstrap, spec))
    a, b = outputs
    assert len(a) > 20
    assert [raw for raw, _ in a] == [raw for raw, _ in b]
    assert [v["chain_index"] for _, v in a] == list(range(1, len(a) + 1))
    assert any(len(v["mergeset_blues"]) > 1 for _, v in a)


def test_crash_between_send_and_commit_leaves_no_gap_and_no_duplicate(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    blocks = simulate(3, 50, seed=12)
    publish(own_broker.bootstrap, blocks)
    reference = DagProcessor(
        own_broker.bootstrap, tmp_path / "ref", CONFIG, output=output_topic(own_broker.bootstrap)
    )
    run_until_idle(reference, own_broker.bootstrap, "ref", len(blocks) - 1)
    reference.close()
    expected = [raw for raw, _ in ordered(own_broker.bootstrap, reference.output)]

    spec = output_topic(own_broker.bootstrap)
    crashing = DagProcessor(own_broker.bootstrap, tmp_path / "s", CONFIG, output=spec)
    real_commit = crashing.state.commit

    def commit(offsets: Any, puts: Any = None, ints: Any = None) -> None:
        if ints and ints[b"emitted"] >= 10:
            raise RuntimeError("power cut")  # outputs were sent; the store never hears
        real_commit(offsets, puts, ints)

    crashing.state.commit = commit  # type: ignore[method-assign]
    reader = Reader(own_broker.bootstrap)
    with pytest.raises(RuntimeError, match="power cut"):
        for message in reader.read({(PROPOSED.name, 0): 0}):
            crashing.handle(message)
    reader.close()
    crashing.close()
    sent = ordered(own_broker.bootstrap, spec)
    assert sent and sent[-1][1]["chain_index"] >= 10

    resumed = DagProcessor(own_broker.bootstrap, tmp_path / "s", CONFIG, output=spec)
    assert resumed.emitted == sent[-1][1]["chain_index"]  # learned from the topic
    run_until_idle(resumed, own_broker.bootstrap, "s", len(blocks) - 1)
    resumed.close()
    assert [raw for raw, _ in ordered(own_broker.bootstrap, spec)] == expected
