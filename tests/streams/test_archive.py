"""The devnet archive: a memory-only broker restarted keeps every record exactly once."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from schemas.events import Position
from streams.admin import ensure_topics
from streams.archive import JOURNAL, ArchivedRecord, ArchiveError, Archiver, TopicArchive
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
        assert ArchivedRecord.decode(record.body()) == record


def _values(archive: TopicArchive) -> list[tuple[str, int, bytes | None]]:
    return [(t, p, r.value) for t, p, r in archive.records()]


def test_torn_tail_is_cut_and_appending_resumes(tmp_path: Path) -> None:
    a, b = ("a", 0), ("b", 2)
    archive = TopicArchive(tmp_path)
    archive.append([(a, ArchivedRecord(0, 0, b"k", b"a0")), (b, ArchivedRecord(0, 0, b"k", b"b0"))])
    archive.append([(a, ArchivedRecord(i, i, b"k", b"a%d" % i)) for i in range(1, 3)])
    archive.close()
    with open(tmp_path / JOURNAL, "ab") as f:
        f.write(b"\x07" * 20)  # a torn frame
    again = TopicArchive(tmp_path)
    assert (again.next_offset(*a), again.next_offset(*b), again.next_offset("c", 0)) == (3, 1, 0)
    assert _values(again) == [("a", 0, b"a0"), ("b", 2, b"b0"), ("a", 0, b"a1"), ("a", 0, b"a2")]
    again.append([(a, ArchivedRecord(2, 2, b"k", b"dup")), (b, ArchivedRecord(1, 1, b"k", b"b1"))])
    assert _values(TopicArchive(tmp_path))[-1] == ("b", 2, b"b1")
    with pytest.raises(ArchiveError, match="gap"):
        again.append([(a, ArchivedRecord(9, 9, b"k", b"a9"))])


def test_an_archive_of_a_file_per_partition_moves_into_the_journal(tmp_path: Path) -> None:
    def legacy(path: Path, values: list[bytes]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        bodies = [ArchivedRecord(i, i, None, v).body() for i, v in enumerate(values)]
        path.write_bytes(b"".join(struct.pack("<II", len(x), zlib.crc32(x)) + x for x in bodies))

    legacy(tmp_path / "lattice.x" / "0.log", [b"x0", b"x1"])
    legacy(tmp_path / "lattice.x" / "1.log", [b"y0"])
    archive = TopicArchive(tmp_path)
    assert archive.counts([TopicSpec("lattice.x", "s", "k", 2)]) == {
        ("lattice.x", 0): 2,
        ("lattice.x", 1): 1,
    }
    assert not list(tmp_path.glob("*/*.log"))
    assert _values(TopicArchive(tmp_path)) == [
        ("lattice.x", 0, b"x0"),
        ("lattice.x", 0, b"x1"),
        ("lattice.x", 1, b"y0"),
    ]


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


def _session(
    root: Path, produce: tuple[int, int], handover: str | None = None
) -> dict[tuple[str, int], list[tuple[Any, ...]]]:
    """One devnet life: fresh broker, re-seed, archive, produce, drain, stop. With
    `handover`, the archiver listens for hand-overs that never come (this producer hands
    nothing over): its backstop must find every record."""
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, TOPICS)
        archive = TopicArchive(root)
        seeder, reader = Producer(broker.bootstrap), Reader(broker.bootstrap)
        archive.reseed(seeder, reader, TOPICS)
        seeder.close()
        reader.close()
        archiver = Archiver(archive, broker.bootstrap, TOPICS, handover=handover)
        archiver.start()
        _produce(broker.bootstrap, *produce)
        archiver.drain()
        archiver.stop()
        return _contents(broker.bootstrap)


@pytest.mark.broker
@pytest.mark.parametrize("handover", [None, "backstop"], ids=["following", "backstop"])
def test_restarts_keep_every_record_exactly_once_at_its_offset(
    tmp_path: Path, handover: str | None
) -> None:
    if handover is not None:
        handover = f"lattice-test-archive-{os.getpid()}-{handover}"
    first = _session(tmp_path, (0, 40), handover)
    assert sum(len(v) for v in first.values()) == 40
    second = _session(tmp_path, (40, 30), handover)
    assert sum(len(v) for v in second.values()) == 70
    for key, records in first.items():
        assert second[key][: len(records)] == records  # same offset, key, value, timestamp
    for records in second.values():
        assert [r[0] for r in records] == list(range(len(records)))
    values = sorted(r[2] for records in second.values() for r in records)
    assert len(values) == len(set(values)) == 70
    third = _session(tmp_path, (70, 0), handover)
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
