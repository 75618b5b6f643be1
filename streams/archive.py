"""The devnet's topic archive: what makes a memory-only broker survive restarts.

The embedded broker keeps topics in memory, so the devnet copies every record of every
catalogue topic into append-only files, one per partition, and on the next start re-seeds
a fresh broker from them before anything else runs. Records are re-produced to their
original partition in their original order with their original key, value, headers and
timestamp, and the broker must hand back the original offsets (it does, since the
archive is contiguous from offset 0): so the offsets that processors store beside their
state stay valid across restarts.

File format (`<root>/<topic>/<partition>.log`), a sequence of frames:
``u32 body length | u32 CRC-32 of body | body``, the body being
``i64 offset | i64 timestamp ms | i32 key length (-1 = null) | key | i32 value length |
value | u16 header count | (u16 name length | name | u32 length | value)*``, little-endian.
A crash can leave a torn last frame; it is detected by length or CRC and cut off. Only
records the broker had acknowledged can be in the archive, and a record is archived
once: the archiver resumes at the next offset the files do not hold.

Shutdown order matters: stop everything that produces, then `Archiver.drain` until every
partition's end offset is on disk, then stop the broker. A hard kill (SIGKILL, power
loss) loses only records the broker held and the archive did not: with the watermarks the
archiver publishes (`streams.durable`), none of those was acknowledged to anyone, or read
by a processor.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from streams.durable import Watermarks
from streams.kafka import Producer, Reader
from streams.topics import TopicSpec

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")
_FIXED = struct.Struct("<qq")
_LEN = struct.Struct("<i")
_HCOUNT = struct.Struct("<H")
_HNAME = struct.Struct("<H")
_HVALUE = struct.Struct("<I")
#: The archiver's fetches: answered as soon as there is data (every acknowledgement waits
#: for this hop), and at most every 10 ms when there is none.
ARCHIVE_READ = {"fetch.wait.max.ms": 10, "fetch.min.bytes": 1}
ARCHIVE_BATCH = 5000


class ArchiveError(RuntimeError):
    """The archive is inconsistent with itself or with the broker."""


@dataclass(frozen=True)
class ArchivedRecord:
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def encode(self) -> bytes:
        parts = [_FIXED.pack(self.offset, self.timestamp_ms)]
        for blob in (self.key, self.value):
            parts.append(_LEN.pack(-1 if blob is None else len(blob)))
            parts.append(blob or b"")
        parts.append(_HCOUNT.pack(len(self.headers)))
        for name, value in self.headers:
            raw = name.encode()
            parts += [_HNAME.pack(len(raw)), raw, _HVALUE.pack(len(value)), value]
        body = b"".join(parts)
        return _FRAME.pack(len(body), zlib.crc32(body)) + body

    @classmethod
    def decode(cls, body: bytes) -> ArchivedRecord:
        offset, timestamp = _FIXED.unpack_from(body, 0)
        pos = _FIXED.size
        blobs: list[bytes | None] = []
        for _ in range(2):
            (length,) = _LEN.unpack_from(body, pos)
            pos += _LEN.size
            if length < 0:
                blobs.append(None)
            else:
                blobs.append(body[pos : pos + length])
                pos += length
        (count,) = _HCOUNT.unpack_from(body, pos)
        pos += _HCOUNT.size
        headers = []
        for _ in range(count):
            (nlen,) = _HNAME.unpack_from(body, pos)
            pos += _HNAME.size
            name = body[pos : pos + nlen].decode()
            pos += nlen
            (vlen,) = _HVALUE.unpack_from(body, pos)
            pos += _HVALUE.size
            headers.append((name, body[pos : pos + vlen]))
            pos += vlen
        return cls(offset, timestamp, blobs[0], blobs[1], tuple(headers))

    @classmethod
    def from_message(cls, message: Any) -> ArchivedRecord:
        kind, timestamp = message.timestamp()
        headers = tuple((k, v or b"") for k, v in (message.headers() or []))
        return cls(
            message.offset(), timestamp if kind else 0, message.key(), message.value(), headers
        )


class PartitionLog:
    """The archive file of one partition."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_offset = 0
        self._file: BinaryIO | None = None
        self._recover()

    def _scan(self) -> Iterator[tuple[int, ArchivedRecord]]:
        """(end position, record) for every intact frame, stopping at the first bad one."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            data = f.read()
        pos = 0
        while pos + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, pos)
            body = data[pos + _FRAME.size : pos + _FRAME.size + length]
            if len(body) < length or zlib.crc32(body) != crc:
                return
            pos += _FRAME.size + length
            yield pos, ArchivedRecord.decode(body)

    def _recover(self) -> None:
        good_end = 0
        expected = 0
        for end, record in self._scan():
            if record.offset != expected:
                raise ArchiveError(
                    f"{self.path}: record at offset {record.offset}, expected {expected}"
                )
            good_end, expected = end, expected + 1
        size = self.path.stat().st_size if self.path.exists() else 0
        if size > good_end:
            log.warning("%s: cutting %d bytes of torn tail", self.path, size - good_end)
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        self.next_offset = expected

    def records(self) -> Iterator[ArchivedRecord]:
        for _, record in self._scan():
            yield record

    def append(self, records: Iterable[ArchivedRecord]) -> None:
        frames = []
        for record in records:
            if record.offset < self.next_offset:
                continue  # at-least-once delivery: already archived
            if record.offset != self.next_offset:
                raise ArchiveError(
                    f"{self.path}: gap before offset {record.offset} (next is {self.next_offset})"
                )
            frames.append(record.encode())
            self.next_offset += 1
        if not frames:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open while archiving
        self._file.write(b"".join(frames))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TopicArchive:
    """All partition logs under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._logs: dict[tuple[str, int], PartitionLog] = {}

    def log(self, topic: str, partition: int) -> PartitionLog:
        key = (topic, partition)
        if key not in self._logs:
            self._logs[key] = PartitionLog(self.root / topic / f"{partition}.log")
        return self._logs[key]

    def counts(self, topics: Iterable[TopicSpec]) -> dict[tuple[str, int], int]:
        return {
            (t.name, p): self.log(t.name, p).next_offset
            for t in topics
            for p in range(t.partitions)
        }

    def reseed(
        self,
        producer: Producer,
        reader: Reader,
        topics: Iterable[TopicSpec],
        progress: Callable[[str, int], None] | None = None,
    ) -> int:
        """Re-produce every archived record into an empty broker; returns how many.

        Verifies that the broker assigned each record its archived offset.
        """
        total = 0
        for spec in topics:
            ends = reader.end_offsets(spec.name)
            if any(end > low for low, end in ends.values()):
                raise ArchiveError(
                    f"refusing to re-seed {spec.name}: the broker already holds records"
                )
            sent = []
            for partition in range(spec.partitions):
                for record in self.log(spec.name, partition).records():
                    future = producer.send_raw(
                        spec.name,
                        record.value,
                        key=record.key,
                        partition=partition,
                        timestamp_ms=record.timestamp_ms or None,
                        headers=record.headers,
                    )
                    sent.append((partition, record.offset, future))
            producer.flush()
            for partition, offset, future in sent:
                got = future.result().offset
                if got != offset:
                    raise ArchiveError(
                        f"{spec.name}[{partition}]: broker put archived offset {offset} at {got}"
                    )
            total += len(sent)
            if progress is not None and sent:
                progress(spec.name, len(sent))
        return total

    def close(self) -> None:
        for partition_log in self._logs.values():
            partition_log.close()


class Archiver:
    """Copies every new record of the given topics from the broker into the archive, and
    publishes how far each partition is on disk (`streams.durable`): records are
    acknowledged, and read by processors, only once it is."""

    def __init__(
        self,
        archive: TopicArchive,
        bootstrap: str,
        topics: Iterable[TopicSpec],
        watermarks: Watermarks | None = None,
    ) -> None:
        self.archive = archive
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.watermarks = watermarks
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="archiver", daemon=True)
        # Every acknowledgement waits for this hop: fetch as soon as the broker has data.
        self._reader = Reader(bootstrap, client_id="lattice-archiver", config=ARCHIVE_READ)

    def start(self) -> None:
        self._reader.assign(self.archive.counts(self.topics))
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # The first record waits; the rest is what is already fetched (a batch
                # consume would wait its whole timeout for a full batch).
                first = self._reader.poll_raw(0.1)
                if first is None:
                    continue
                batch = [first, *self._reader.poll_batch(ARCHIVE_BATCH, 0)]
                by_partition: dict[tuple[str, int], list[ArchivedRecord]] = {}
                for message in batch:
                    if message.error() is None:
                        key = (message.topic(), message.partition())
                        by_partition.setdefault(key, []).append(
                            ArchivedRecord.from_message(message)
                        )
                for (topic, partition), records in by_partition.items():
                    partition_log = self.archive.log(topic, partition)
                    partition_log.append(records)
                    if self.watermarks is not None:
                        self.watermarks.advance(topic, partition, partition_log.next_offset)
        except BaseException as exc:  # surfaced by drain/stop; the devnet must not run unarchived
            log.exception("archiver failed")
            self._error = exc

    @property
    def failed(self) -> BaseException | None:
        return self._error

    def drain(self, timeout: float = 30.0) -> None:
        """Return once every record now on the broker is archived."""
        probe = Reader(self.bootstrap, client_id="lattice-archiver-drain")
        try:
            spans = probe.end_offsets_of([spec.name for spec in self.topics])
            targets = {key: end for key, (_, end) in spans.items()}
        finally:
            probe.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._error is not None:
                raise ArchiveError(f"archiver failed: {self._error!r}")
            behind = {k: v for k, v in targets.items() if self.archive.log(*k).next_offset < v}
            if not behind:
                return
            if time.monotonic() > deadline:
                raise ArchiveError(f"archive still behind after {timeout}s: {behind}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._reader.close()
        self.archive.close()
