"""The devnet archive: a memory-only broker restarted keeps every record exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas.events import Position
from streams.admin import ensure_topics
from streams.archive import ArchivedRecord, ArchiveError, Archiver, PartitionLog, TopicArchive
from streams.broker import EmbeddedBroker
from streams.kafka import Producer, Reader, from_beginning
from streams.topics import TopicSpec

TOPICS = (
    TopicSpec("lattice.test.a", "lattice.common.Position", "k", 3),
    TopicSpec("lattice.test.b", "lattice.common.Position", "k", 1, compacted=True),
)


def test_frames_round_trip_with_null_key_and_headers() -> None:
    records = [
        ArchivedRecord(0, 1, None, b"v", (("h", b"1"), ("g", b""))),
        ArchivedRecord(1, 2, b"k", None),
    ]
    for record in records:
        assert ArchivedRecord.decode(record.encode()[8:]) == record


def test_torn_tail_is_cut_and_appending_resumes(tmp_path: Path) -> None:
    log = PartitionLog(tmp_path / "0.log")
    log.append([ArchivedRecord(i, i, b"k", b"v%d" % i) for i in range(3)])
    log.close()
    with open(log.path, "ab") as f:
        f.write(ArchivedRecord(3, 3, b"k", b"torn").encode()[:-2])
    again = PartitionLog(log.path)
    assert again.next_offset == 3
    assert [r.value for r in again.records()] == [b"v0", b"v1", b"v2"]
    again.append([ArchivedRecord(2, 2, b"k", b"dup"), ArchivedRecord(3, 3, b"k", b"v3")])
    assert [r.value for r in PartitionLog(log.path).records()] == [b"v0", b"v1", b"v2", b"v3"]
    with pytest.raises(ArchiveError, match="gap"):
        again.append([ArchivedRecord(9, 9, b"k", b"v9")])


def _produce(bootstrap: str, start: int, count: int) -> None:
    producer = Producer(bootstrap)
    for i in range(start, start + count):
        spec = TOPICS[i % 2]
        producer.send(
            spec,
            Position(topic="x", partition=0, offset=i),
            key=f"key-{i % 11}",
            timestamp_ms=1_000_000 + i,
        )
    producer.close()


def _contents(bootstrap: str) -> dict[tuple[str, int], list[tuple[Any, ...]]]:
    reader = Reader(bootstrap)
    try:
        out: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
        for spec in TOPICS:
            for m in reader.read(from_beginning(spec.name, reader.partitions(spec.name))):
                out.setdefault((m.topic(), m.partition()), []).append(
                    (m.offset(), m.key(), m.value(), m.timestamp()[1])
                )
        return out
    finally:
        reader.close()


def _session(root: Path, produce: tuple[int, int]) -> dict[tuple[str, int], list[tuple[Any, ...]]]:
    """One devnet life: fresh broker, re-seed, archive, produce, drain, stop."""
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        archive = TopicArchive(root)
        seeder, reader = Producer(broker.bootstrap), Reader(broker.bootstrap)
        archive.reseed(seeder, reader, TOPICS)
        seeder.close()
        reader.close()
        archiver = Archiver(archive, broker.bootstrap, TOPICS)
        archiver.start()
        _produce(broker.bootstrap, *produce)
        archiver.drain()
        archiver.stop()
        return _contents(broker.bootstrap)


@pytest.mark.broker
def test_restarts_keep_every_record_exactly_once_at_its_offset(tmp_path: Path) -> None:
    first = _session(tmp_path, (0, 40))
    assert sum(len(v) for v in first.values()) == 40
    second = _session(tmp_path, (40, 30))
    assert sum(len(v) for v in second.values()) == 70
    for key, records in first.items():
        assert second[key][: len(records)] == records  # same offset, key, value, timestamp
    for records in second.values():
        assert [r[0] for r in records] == list(range(len(records)))
    values = sorted(r[2] for records in second.values() for r in records)
    assert len(values) == len(set(values)) == 70
    third = _session(tmp_path, (70, 0))
    assert third == second


@pytest.mark.broker
def test_reseed_refuses_a_broker_that_already_has_records(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    ensure_topics(broker.bootstrap, TOPICS)
    _produce(broker.bootstrap, 0, 2)
    producer, reader = Producer(broker.bootstrap), Reader(broker.bootstrap)
    try:
        with pytest.raises(ArchiveError, match="already holds records"):
            TopicArchive(tmp_path).reseed(producer, reader, TOPICS)
    finally:
        producer.close()
        reader.close()
