"""Producer, reader and admin against the real embedded broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient

from schemas.codec import CodecError
from schemas.events import JobTokens, Position
from schemas.record import Event
from streams.admin import TopicMismatch, ensure_topics, list_topics
from streams.broker import EmbeddedBroker
from streams.kafka import CatchUp, DeliveryError, Producer, Reader, from_beginning
from streams.topics import TOPICS, TopicSpec, partition_of

pytestmark = pytest.mark.broker


def position(i: int) -> Position:
    return Position(topic="t", partition=i % 7, offset=i)


def offset_of(event: Event) -> int:
    assert isinstance(event, Position)
    return event.offset


def test_ensure_topics_is_idempotent(broker: EmbeddedBroker) -> None:
    first = ensure_topics(broker.bootstrap, TOPICS)
    again = ensure_topics(broker.bootstrap, TOPICS)
    assert again == []
    assert set(first) <= {t.name for t in TOPICS}
    metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5)
    for spec in TOPICS:
        assert len(metadata.topics[spec.name].partitions) == spec.partitions


def test_partition_count_mismatch_is_an_error(
    broker: EmbeddedBroker, make_topic: Callable[..., TopicSpec]
) -> None:
    spec = make_topic(partitions=2)
    wrong = TopicSpec(spec.name, spec.schema, spec.key, 5)
    with pytest.raises(TopicMismatch, match="has 2 partitions; the catalogue says 5"):
        ensure_topics(broker.bootstrap, [wrong])


def test_produce_and_read_back_decoded(
    broker: EmbeddedBroker, make_topic: Callable[..., TopicSpec]
) -> None:
    spec = make_topic(schema="lattice.common.Position", partitions=3)
    producer = Producer(broker.bootstrap)
    futures = [producer.send(spec, position(i), key=f"k{i % 5}") for i in range(50)]
    producer.flush()
    delivered = [f.result() for f in futures]
    producer.close()
    # Same key, same partition, and exactly where Kafka's murmur2 puts it.
    for i, d in enumerate(delivered):
        assert d.partition == partition_of(f"k{i % 5}", 3)
    reader = Reader(broker.bootstrap)
    try:
        messages = list(reader.read(from_beginning(spec.name, reader.partitions(spec.name))))
        records = sorted((reader.decode(m) for m in messages), key=lambda r: offset_of(r.event))
    finally:
        reader.close()
    assert [r.event for r in records] == [position(i) for i in range(50)]
    assert {r.event.SCHEMA for r in records} == {"lattice.common.Position"}
    for r in records:
        assert r.key == f"k{offset_of(r.event) % 5}"
    # Per key, the log keeps the order of sending.
    for key in {r.key for r in records}:
        offsets = [
            offset_of(r.event) for r in sorted(records, key=lambda r: r.offset) if r.key == key
        ]
        assert offsets == sorted(offsets)


def test_end_offsets_are_true_ends_even_after_multi_record_batches(
    broker: EmbeddedBroker, make_topic: Callable[..., TopicSpec]
) -> None:
    spec = make_topic(schema="lattice.common.Position", partitions=1)
    producer = Producer(broker.bootstrap, config={"linger.ms": 200})
    for i in range(25):
        producer.send(spec, position(i), partition=0)
    producer.close()
    reader = Reader(broker.bootstrap)
    try:
        assert reader.end_offsets(spec.name) == {0: (0, 25)}
    finally:
        reader.close()
    counts = {s.name: s.records for s in list_topics(broker.bootstrap)}
    assert counts[spec.name] == 25


class SteadyWriter:
    """One record at a time to a topic's partition 0, acknowledged each (as proposers write
    blocks), for up to 30 s: the kind of partition that EOF alone chased for over a minute."""

    def __init__(self, broker: EmbeddedBroker, spec: TopicSpec) -> None:
        self.producer = Producer(broker.bootstrap)
        self.spec = spec
        self.acked: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.write)

    def write(self) -> None:
        deadline = time.monotonic() + 30
        while not self.stop.is_set() and time.monotonic() < deadline:
            delivered = self.producer.send(self.spec, position(0), partition=0).result(10)
            self.acked.append(delivered.offset)

    def __enter__(self) -> SteadyWriter:
        self.thread.start()
        while len(self.acked) < 300:
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        self.producer.close()

    @property
    def writing(self) -> bool:
        return self.thread.is_alive()


def test_reads_of_a_topic_being_written_end_at_the_end_as_of_the_call(
    broker: EmbeddedBroker, make_topic: Callable[..., TopicSpec]
) -> None:
    spec = make_topic(schema="lattice.common.Position", partitions=1)
    reader = Reader(broker.bootstrap)
    try:
        with SteadyWriter(broker, spec) as writer:
            for _ in range(3):
                written = len(writer.acked)
                offsets = [m.offset() for m in reader.read(from_beginning(spec.name, [0]))]
                assert writer.writing, "the read only ended when the writing did"
                assert offsets == list(range(len(offsets)))
                assert len(offsets) >= written
                (low, end) = reader.end_offsets(spec.name)[0]
                assert low == 0 and end >= len(offsets)
                assert writer.writing
    finally:
        reader.close()


def test_catching_up_ends_at_the_ends_as_of_the_start_though_writing_goes_on(
    broker: EmbeddedBroker, make_topic: Callable[..., TopicSpec]
) -> None:
    busy = make_topic(schema="lattice.common.Position", partitions=1)
    empty = make_topic(schema="lattice.common.Position", partitions=1)
    reader = Reader(broker.bootstrap)
    try:
        with SteadyWriter(broker, busy) as writer:
            assert CatchUp(reader, {(empty.name, 0): 0}).done  # nothing there to catch up on
            written = len(writer.acked)
            catch_up = CatchUp(reader, {(busy.name, 0): 0, (empty.name, 0): 0})
            assert catch_up.behind == {(busy.name, 0)}
            reader.assign({(busy.name, 0): 0, (empty.name, 0): 0})
            read = 0
            while not catch_up.done:
                message = reader.poll_raw(1.0)
                if message is not None:
                    read += message.error() is None
                    catch_up.saw(message)
            assert writer.writing, "caught up only when the writing stopped"
            assert read >= written
    finally:
        reader.close()


def test_encoding_errors_raise_before_anything_is_sent(
    broker: EmbeddedBroker, make_topic: Callable[..., TopicSpec]
) -> None:
    spec = make_topic(schema="lattice.common.Position", partitions=1)
    producer = Producer(broker.bootstrap)
    with pytest.raises(ValueError, match="Position"):
        producer.send(spec, Position(topic=7, partition=0, offset=0))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match=r"holds lattice\.common\.Position records"):
        producer.send(
            spec, JobTokens(job_id=b"", node=b"", attempt=0, index=0, token_ids=(), text="")
        )
    producer.close()
    reader = Reader(broker.bootstrap)
    try:
        assert reader.end_offsets(spec.name) == {0: (0, 0)}
    finally:
        reader.close()


def test_delivery_errors_are_surfaced(
    broker: EmbeddedBroker, make_topic: Callable[..., TopicSpec]
) -> None:
    spec = make_topic(schema="lattice.common.Position", partitions=1)
    producer = Producer(broker.bootstrap, config={"message.max.bytes": 2000})
    with pytest.raises(DeliveryError, match=r"too large|size"):
        producer.send_raw(spec.name, b"x" * 5000)
    # An unreachable broker fails the future and the flush instead of hanging forever.
    dead = Producer("127.0.0.1:1", config={"message.timeout.ms": 500, "log_level": 0})
    future = dead.send(spec, position(1))
    with pytest.raises(DeliveryError):
        future.result(timeout=10)
    with pytest.raises(DeliveryError):
        dead.flush(5)
    dead.close()
    producer.close()


def test_abandoning_fails_waiting_sends_at_once_and_closing_does_not_wait(
    make_topic: Callable[..., TopicSpec],
) -> None:
    # A broker that went away under a producer with the client's default timeouts (30 s).
    spec = make_topic(schema="lattice.common.Position", partitions=1)
    with EmbeddedBroker() as gone:
        producer = Producer(gone.bootstrap, config={"log_level": 0})
        producer.send(spec, position(0)).result(timeout=10)
    waiting = producer.send(spec, position(1))
    started = time.monotonic()
    producer.abandon()
    with pytest.raises(DeliveryError, match="Purged"):
        waiting.result(timeout=5)
    late = producer.send(spec, position(2))  # a request the stopping gateway still took
    with pytest.raises(DeliveryError, match="abandoned"):
        late.result(timeout=0)
    with pytest.raises(DeliveryError, match="Purged"):
        producer.close(0.0)
    assert time.monotonic() - started < 5
