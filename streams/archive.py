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
A crash can leave a torn last frame, and space allocated ahead of the data (zeros); both
are detected (by length or CRC, and a length of 0) and cut off at the next start. Only
records the broker had acknowledged can be in the archive, and a record is archived
once: the archiver resumes at the next offset the files do not hold.

Shutdown order matters: stop everything that produces, then `Archiver.drain` until every
partition's end offset is on disk, then stop the broker. A hard kill (SIGKILL, power
loss) loses only records the broker held and the archive did not: with the watermarks the
archiver publishes (`streams.durable`), none of those was acknowledged to anyone, or read
by a processor.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams import durable
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
#: The archiver's fetches. The embedded broker answers a waiting fetch only when its wait
#: runs out, so this wait is what a processor's input waits for the archive (the gateway's
#: records come straight from its delivery reports, `Archiver.offer`); at 10 ms the broker
#: spent more of the 2 cores on the archiver's fetches than the latency saved was worth.
ARCHIVE_READ = {"fetch.wait.max.ms": 50, "fetch.min.bytes": 1}
ARCHIVE_BATCH = 5000
#: Space allocated ahead of a partition file's data: as much again as it holds, within these.
MIN_ALLOCATION = 64 * 1024
MAX_ALLOCATION = 8 * 1024 * 1024


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
    """The archive file of one partition.

    Space is allocated ahead of the data (zeros, in growing steps), so that most appends
    change no file metadata and `fdatasync` has only the new bytes to flush: on ext4
    under a devnet's load an fsync that also grows the file took milliseconds, and every
    acknowledgement waits for it. The data ends at the first frame of length 0 (a frame
    holds at least the 26 bytes of its fixed fields); a torn frame ends it too.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_offset = 0
        self._fd: int | None = None
        self._end = 0
        self._allocated = 0
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
            if length == 0 or len(body) < length or zlib.crc32(body) != crc:
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
        if self.path.exists():
            with open(self.path, "r+b") as f:
                f.seek(good_end)
                if f.read().strip(b"\x00"):
                    log.warning("%s: cutting a torn tail after byte %d", self.path, good_end)
                f.truncate(good_end)
        self.next_offset = expected
        self._end = self._allocated = good_end

    def records(self) -> Iterator[ArchivedRecord]:
        for _, record in self._scan():
            yield record

    def append(self, records: Iterable[ArchivedRecord]) -> None:
        """Write and sync these records (those already archived are skipped)."""
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
        data = b"".join(frames)
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        grown = self._end + len(data) > self._allocated
        if grown:
            step = min(MAX_ALLOCATION, max(MIN_ALLOCATION, self._allocated))
            self._allocated = self._end + len(data) + step
            os.posix_fallocate(self._fd, self._end, self._allocated - self._end)
        os.pwrite(self._fd, data, self._end)
        self._end += len(data)
        # A new size is metadata: a full fsync then; otherwise only the data.
        os.fsync(self._fd) if grown else os.fdatasync(self._fd)

    def close(self) -> None:
        """Close, giving back the space allocated ahead."""
        if self._fd is not None:
            os.ftruncate(self._fd, self._end)
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._allocated = self._end


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
    acknowledged, and read by processors, only once it is.

    Two ways in, one writer: a fetch loop reads every record from the broker, and
    `offer` takes a record straight from a producer of this process the moment the broker
    acknowledged it (the gateway's: a wallet waits for that acknowledgement, and a fetch
    from the embedded broker is answered only when its wait runs out). The writer
    appends each partition's records in offset order, holding a record that comes before
    the ones ahead of it (the fetch loop brings those), and fsyncs each partition once per
    batch: a group commit.
    """

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
        self._fetcher = threading.Thread(target=self._fetch, name="archiver", daemon=True)
        self._writer = threading.Thread(target=self._write, name="archive-writer", daemon=True)
        self._reader = Reader(bootstrap, client_id="lattice-archiver", config=ARCHIVE_READ)
        self._queue: list[tuple[tuple[str, int], ArchivedRecord]] = []
        self._wake = threading.Condition()
        #: Records that came before the ones ahead of them, per partition, by offset.
        self._ahead: dict[tuple[str, int], dict[int, ArchivedRecord]] = {}
        self._archived = {(t.name, p) for t in self.topics for p in range(t.partitions)}

    def start(self) -> None:
        self._reader.assign(self.archive.counts(self.topics))
        self._writer.start()
        self._fetcher.start()

    def offer(self, message: Any, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """A record the broker just acknowledged to a producer of this process (its
        delivery report, and the headers it was sent with), to be archived without
        waiting for the fetch loop."""
        key = (message.topic(), message.partition())
        if key in self._archived:
            record = dataclasses.replace(
                ArchivedRecord.from_message(message), headers=tuple(headers)
            )
            self._enqueue([(key, record)])

    def _enqueue(self, records: list[tuple[tuple[str, int], ArchivedRecord]]) -> None:
        with self._wake:
            self._queue += records
            self._wake.notify()

    def _fetch(self) -> None:
        try:
            while not self._stop.is_set():
                # The first record waits; the rest is what is already fetched (a batch
                # consume would wait its whole timeout for a full batch).
                first = self._reader.poll_raw(0.1)
                if first is None:
                    continue
                batch = [first, *self._reader.poll_batch(ARCHIVE_BATCH, 0)]
                self._enqueue(
                    [
                        ((m.topic(), m.partition()), ArchivedRecord.from_message(m))
                        for m in batch
                        if m.error() is None
                    ]
                )
        except BaseException as exc:  # surfaced by drain/stop; the devnet must not run unarchived
            log.exception("archiver failed")
            self._error = exc

    def _write(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._queue and not self._stop.is_set():
                        self._wake.wait()
                    if not self._queue:
                        return
                    batch, self._queue = self._queue, []
                touched = set()
                for key, record in batch:
                    if record.offset >= self.archive.log(*key).next_offset:
                        self._ahead.setdefault(key, {})[record.offset] = record
                        touched.add(key)
                for key in touched:
                    self._append(key)
        except BaseException as exc:
            log.exception("archive writer failed")
            self._error = exc

    def _append(self, key: tuple[str, int]) -> None:
        partition_log = self.archive.log(*key)
        ahead = self._ahead[key]
        run = []
        offset = partition_log.next_offset
        while offset in ahead:
            run.append(ahead.pop(offset))
            offset += 1
        if run:
            partition_log.append(run)
            if self.watermarks is not None:
                self.watermarks.advance(*key, partition_log.next_offset)
                durable.poke()

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
        if self._fetcher.is_alive():
            self._fetcher.join()
        with self._wake:
            self._wake.notify()
        if self._writer.is_alive():
            self._writer.join()
        self._reader.close()
        self.archive.close()
