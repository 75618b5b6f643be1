"""The devnet's topic archive: what makes a memory-only broker survive restarts.

The embedded broker keeps topics in memory, so the devnet copies every record of every
catalogue topic into one append-only journal, and on the next start re-seeds a fresh
broker from it before anything else runs. Records are re-produced to their
original partition in their original order with their original key, value, headers and
timestamp, and the broker must hand back the original offsets (it does, since the
archive is contiguous from offset 0): so the offsets that processors store beside their
state stay valid across restarts.

File format (`<root>/journal.log`): a sequence of frames, each a placed record
(`streams.frames`: its topic and partition, then offset, timestamp, key, value and
headers). A crash can leave a torn last frame, and space allocated ahead of the data
(zeros); both are detected (by length or CRC, and a length of 0) and cut off at the next
start. Only records the broker had acknowledged can be in the archive, and a record is
archived once: the archiver resumes each partition at the next offset the journal does not
hold. An archive of the earlier layout (a file per partition) is moved into the journal at
the first start.

Shutdown order matters: stop everything that produces, then `Archiver.drain` until every
partition's end offset is on disk, then stop the broker. A hard kill (SIGKILL, power
loss) loses only records the broker held and the archive did not: with the watermarks the
archiver publishes (`streams.durable`), none of those was acknowledged to anyone, or read
by a processor.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from streams import durable
from streams.durable import Watermarks
from streams.feed import FeedServer, feed_name
from streams.frames import (
    ArchivedRecord,
    frame,
    frames_of,
    placed_frame,
    placed_record,
    placement,
)
from streams.handover import Listener
from streams.kafka import Producer, Reader
from streams.topics import TopicSpec

log = logging.getLogger(__name__)

#: The journal's file name, under the archive's directory.
JOURNAL = "journal.log"
#: Re-seeding waits for the broker's offsets this often (bounding the futures held).
RESEED_CHECK_EVERY = 10_000
#: The archiver's fetches. A fetch over every partition costs the embedded broker
#: milliseconds of CPU, and it answers a waiting fetch only when its wait runs out:
#: fetching every 50 ms kept it at a fifth of a core on an idle devnet.
ARCHIVE_READ = {"fetch.wait.max.ms": 250, "fetch.min.bytes": 1}
ARCHIVE_BATCH = 5000
#: With hand-overs, the fetch loop is a backstop that looks this often for records nobody
#: handed over, starting each partition where the journal ends. A fetch that returns
#: records costs the embedded broker a walk over every batch of the partition (tansu
#: 0.6's memory storage lists them all), so a reader following every record doubled the
#: walks on partitions only one processor reads; a fetch at a partition's end walks none.
BACKSTOP_EVERY_S = 0.25
#: The longest one backstop pass reads before it looks again from the journal's end.
BACKSTOP_PASS_S = 0.5
#: Space allocated ahead of the journal's data: as much again as it holds, within these.
MIN_ALLOCATION = 64 * 1024
MAX_ALLOCATION = 8 * 1024 * 1024


class ArchiveError(RuntimeError):
    """The archive is inconsistent with itself or with the broker."""


class TopicArchive:
    """Every archived partition's records, in one append-only journal.

    One file rather than one per partition: a group commit that touches a dozen
    partitions costs one `fdatasync`, not a dozen, and every acknowledgement waits for
    the commit in progress. Space is allocated ahead of the data (zeros, in growing
    steps), so that most appends change no file metadata and `fdatasync` has only the
    new bytes to flush: on ext4 under a devnet's load an fsync that also grows the file
    took milliseconds. A partition's records are in offset order in the journal, from
    offset 0 without a gap (checked on every append and at every start).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / JOURNAL
        #: Per partition, the next offset the journal does not hold.
        self._next: dict[tuple[str, int], int] = {}
        self._fd: int | None = None
        self._end = 0
        self._allocated = 0
        self._migrate()
        self._recover()

    def _recover(self) -> None:
        good_end = 0
        for end, (topic, partition, record) in self._scan():
            expected = self._next.get((topic, partition), 0)
            if record.offset != expected:
                raise ArchiveError(
                    f"{self.path}: {topic}[{partition}] record at offset {record.offset}, "
                    f"expected {expected}"
                )
            self._next[(topic, partition)] = expected + 1
            good_end = end
        if self.path.exists():
            with open(self.path, "r+b") as f:
                f.seek(good_end)
                if f.read().strip(b"\x00"):
                    log.warning("%s: cutting a torn tail after byte %d", self.path, good_end)
                f.truncate(good_end)
        self._end = self._allocated = good_end

    def _scan(self) -> Iterator[tuple[int, tuple[str, int, ArchivedRecord]]]:
        for end, body in frames_of(self.path):
            yield end, placed_record(body)

    def _migrate(self) -> None:
        """Bring an archive of the earlier layout (a file per partition,
        `<topic>/<partition>.log`) into the journal, then remove those files."""
        legacy = sorted(self.root.glob("*/*.log")) if self.root.is_dir() else []
        if not legacy:
            return
        if not self.path.exists():
            tmp = self.path.with_suffix(".migrating")
            with open(tmp, "wb") as f:
                for old in legacy:
                    topic, partition = old.parent.name, int(old.stem)
                    for _, body in frames_of(old):
                        f.write(frame(placement(topic, partition) + body))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            log.warning("%s: %d partition files moved into the journal", self.root, len(legacy))
        for old in legacy:  # already in the journal (a stop between the two steps)
            old.unlink()

    def next_offset(self, topic: str, partition: int) -> int:
        return self._next.get((topic, partition), 0)

    def counts(self, topics: Iterable[TopicSpec]) -> dict[tuple[str, int], int]:
        return {
            (t.name, p): self.next_offset(t.name, p) for t in topics for p in range(t.partitions)
        }

    def records(self) -> Iterator[tuple[str, int, ArchivedRecord]]:
        """Every record, in journal order (each partition's in offset order)."""
        for _, item in self._scan():
            yield item

    def append(
        self, records: Iterable[tuple[tuple[str, int], ArchivedRecord]]
    ) -> list[tuple[str, bytes]]:
        """Write and sync these records (those already archived are skipped): one
        write and one sync for all of them. The frames written, with their topics."""
        frames: list[tuple[str, bytes]] = []
        for (topic, partition), record in records:
            expected = self.next_offset(topic, partition)
            if record.offset < expected:
                continue  # at-least-once delivery: already archived
            if record.offset != expected:
                raise ArchiveError(
                    f"{self.path}: {topic}[{partition}] gap before offset {record.offset} "
                    f"(next is {expected})"
                )
            frames.append((topic, placed_frame(topic, partition, record)))
            self._next[(topic, partition)] = expected + 1
        if not frames:
            return frames
        data = b"".join(body for _, body in frames)
        if self._fd is None:
            self.root.mkdir(parents=True, exist_ok=True)
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
        return frames

    def reseed(
        self,
        producer: Producer,
        reader: Reader,
        topics: Iterable[TopicSpec],
        progress: Callable[[str, int], None] | None = None,
    ) -> int:
        """Re-produce every archived record of these topics into an empty broker; returns
        how many. Verifies that the broker assigned each record its archived offset."""
        wanted = {spec.name: spec for spec in topics}
        for name in wanted:
            ends = reader.end_offsets(name)
            if any(end > low for low, end in ends.values()):
                raise ArchiveError(f"refusing to re-seed {name}: the broker already holds records")
        per_topic: dict[str, int] = {}
        sent: list[tuple[str, int, int, Future[Any]]] = []

        def check() -> None:
            producer.flush()
            for topic, partition, offset, future in sent:
                got = future.result().offset
                if got != offset:
                    raise ArchiveError(
                        f"{topic}[{partition}]: broker put archived offset {offset} at {got}"
                    )
            sent.clear()

        for topic, partition, record in self.records():
            if topic not in wanted:
                continue  # a topic no longer in the catalogue
            future = producer.send_raw(
                topic,
                record.value,
                key=record.key,
                partition=partition,
                timestamp_ms=record.timestamp_ms or None,
                headers=record.headers,
            )
            sent.append((topic, partition, record.offset, future))
            per_topic[topic] = per_topic.get(topic, 0) + 1
            if len(sent) >= RESEED_CHECK_EVERY:
                check()
        check()
        if progress is not None:
            for topic, count in per_topic.items():
                progress(topic, count)
        return sum(per_topic.values())

    def close(self) -> None:
        """Close, giving back the space allocated ahead."""
        if self._fd is not None:
            os.ftruncate(self._fd, self._end)
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._allocated = self._end


class Archiver:
    """Copies every new record of the given topics from the broker into the archive, and
    publishes how far each partition is on disk (`streams.durable`): records are
    acknowledged, and read by processors, only once it is.

    Three ways in, one writer: `offer` takes a record straight from a producer of this
    process the moment the broker acknowledged it (the gateway's: a wallet waits for that
    acknowledgement); the hand-over socket takes those of the devnet's other processes
    (`streams.handover`); a fetch loop is the backstop for any the other two missed,
    looking at every partition from where the journal ends every `BACKSTOP_EVERY_S` (or,
    without a hand-over socket, following every record). The writer appends each
    partition's records in offset order, holding a record that comes before the ones ahead
    of it (the fetch loop brings those), and syncs the journal once per batch: a group
    commit.
    """

    def __init__(
        self,
        archive: TopicArchive,
        bootstrap: str,
        topics: Iterable[TopicSpec],
        watermarks: Watermarks | None = None,
        handover: str | None = None,
    ) -> None:
        """`handover`: the name of the socket the devnet's processes hand their records
        over on (`streams.handover`); without it, every record is fetched."""
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
        self._listener = None if handover is None else Listener(handover, self._handed_over)
        #: Durable records sent on to the processes that asked (`streams.feed`).
        self._feed = None if handover is None else FeedServer(feed_name(handover))

    def start(self) -> None:
        self._writer.start()
        self._fetcher.start()
        if self._listener is not None:
            self._listener.start()
        if self._feed is not None:
            self._feed.start()

    def _handed_over(self, records: list[tuple[tuple[str, int], ArchivedRecord]]) -> None:
        self._enqueue([item for item in records if item[0] in self._archived])

    def offer(self, message: Any, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """A record the broker just acknowledged to a producer of this process (its
        delivery report, and the headers it was sent with), to be archived without
        waiting for the fetch loop."""
        key = (message.topic(), message.partition())
        if key in self._archived:
            self._enqueue([(key, ArchivedRecord.from_message(message, headers))])

    def _enqueue(self, records: list[tuple[tuple[str, int], ArchivedRecord]]) -> None:
        with self._wake:
            self._queue += records
            self._wake.notify()

    def _fetch(self) -> None:
        try:
            if self._listener is None:
                self._follow()
            else:
                while not self._stop.wait(BACKSTOP_EVERY_S):
                    self._backstop()
        except BaseException as exc:  # surfaced by drain/stop; the devnet must not run unarchived
            log.exception("archiver failed")
            self._error = exc

    def _follow(self) -> None:
        """Every record, as the broker has it: nothing is handed over."""
        self._reader.assign(self.archive.counts(self.topics))
        while not self._stop.is_set():
            # The first record waits; the rest is what is already fetched (a batch
            # consume would wait its whole timeout for a full batch).
            first = self._reader.poll_raw(0.1)
            if first is not None:
                self._take([first, *self._reader.poll_batch(ARCHIVE_BATCH, 0)])

    def _backstop(self) -> None:
        """One look at every partition from where the journal ends: what a hand-over
        missed (a producer outside the devnet, or one that died between the broker's
        acknowledgement and its hand-over) is fetched; a partition with nothing missing
        answers at its end."""
        positions = {key: self.archive.next_offset(*key) for key in sorted(self._archived)}
        self._reader.assign(positions)
        open_ = set(positions)
        deadline = time.monotonic() + BACKSTOP_PASS_S
        while open_ and time.monotonic() < deadline and not self._stop.is_set():
            batch = self._reader.poll_batch(ARCHIVE_BATCH, 0.05)
            open_ -= {(m.topic(), m.partition()) for m in batch if m.error() is not None}
            self._take(batch)
        self._reader.unassign()

    def _take(self, messages: list[Any]) -> None:
        records = [
            ((m.topic(), m.partition()), ArchivedRecord.from_message(m))
            for m in messages
            if m.error() is None
        ]
        if records:
            self._enqueue(records)

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
                    if record.offset >= self.archive.next_offset(*key):
                        self._ahead.setdefault(key, {})[record.offset] = record
                        touched.add(key)
                self._append(touched)
        except BaseException as exc:
            log.exception("archive writer failed")
            self._error = exc

    def _append(self, touched: set[tuple[str, int]]) -> None:
        """Every partition's records that now follow on from the journal, in one commit."""
        run = []
        for key in touched:
            ahead = self._ahead[key]
            offset = self.archive.next_offset(*key)
            while offset in ahead:
                run.append((key, ahead.pop(offset)))
                offset += 1
        if not run:
            return
        written = self.archive.append(run)
        if self.watermarks is not None:
            for key in touched:
                self.watermarks.advance(*key, self.archive.next_offset(*key))
            durable.poke()
        if self._feed is not None:
            self._feed.publish(written)

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
            behind = {k: v for k, v in targets.items() if self.archive.next_offset(*k) < v}
            if not behind:
                return
            if time.monotonic() > deadline:
                raise ArchiveError(f"archive still behind after {timeout}s: {behind}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        if self._feed is not None:
            self._feed.close()
        if self._fetcher.is_alive():
            self._fetcher.join()
        with self._wake:
            self._wake.notify()
        if self._writer.is_alive():
            self._writer.join()
        self._reader.close()
        self.archive.close()
