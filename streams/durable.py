"""Durable watermarks: how much of each partition is on disk, where the broker keeps
records in memory only.

The embedded broker acknowledges a record once it holds it in memory; the devnet's archive
(`streams.archive`) is what survives a crash. So a record counts as acknowledged once the
archive has fsynced it, as a Kafka cluster's high watermark counts a record once its
in-sync replicas hold it. The archiver publishes, for every catalogue partition, how many
records it has on disk (its next offset) in a small file that every process of the devnet
maps (`Watermarks`), and `Gate` reads it:

- a producer's send resolves only once its record is durable (`streams.kafka.Producer`):
  the gateway answers with a transaction hash, and a processor lets go of an outbox entry,
  only then;
- a processor handles an input record only once it is durable (`processors.runtime`), so
  no position a processor stores points past what a restart re-seeds: offsets keep their
  meaning across a hard stop of every process, the broker included.

The file also holds a *generation*, raised each time the broker is started on the archive:
a record the broker acknowledged before a restart but did not get on disk is gone, and a
wait for it fails (`BrokerRestarted`) instead of being met by whatever record the new
broker later puts at that offset.

With a Kafka cluster there is no gate: `acks=all`, replication and `min.insync.replicas`
make the broker's own acknowledgement the durable one (`streams.admin`).

Layout: magic (8 bytes), generation (u32), slot count (u32), then one little-endian i64
per slot, the catalogue's partitions in its order (`streams.topics.TOPICS`). Aligned 8-byte
stores and loads are single instructions on the machines this runs on; within a
generation each value only grows.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from streams.topics import TOPICS, TopicSpec

#: Where a devnet's processes find the watermark file (set by the devnet for its children).
ENV = "LATTICE_DURABLE_WATERMARKS"
MAGIC = b"LATWM\x00\x00\x01"
_HEADER = struct.Struct("<8sII")
_SLOT = struct.Struct("<q")
#: How often a waiting gate looks at the file again.
POLL_S = 0.0005
MAX_POLL_S = 0.004
#: How often the waiting thread looks when the archiver runs in this process (and pokes).
LOCAL_POLL_S = 0.05


class BrokerRestarted(RuntimeError):
    """The broker was restarted on the archive while a record was not yet durable."""


def slots(topics: Iterable[TopicSpec] = TOPICS) -> dict[tuple[str, int], int]:
    """Each catalogue partition's slot in the file."""
    keys = [(spec.name, p) for spec in topics for p in range(spec.partitions)]
    return {key: index for index, key in enumerate(keys)}


class Watermarks:
    """The file, mapped: written by the archiver, read by every gate."""

    def __init__(self, path: Path, *, writable: bool = False) -> None:
        self.path = path
        self.slots = slots()
        size = _HEADER.size + _SLOT.size * len(self.slots)
        with open(path, "r+b" if writable else "rb") as f:
            if os.fstat(f.fileno()).st_size != size:
                raise ValueError(f"{path}: not a watermark file of this catalogue")
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            self._map = mmap.mmap(f.fileno(), size, access=access)
        magic, _, count = _HEADER.unpack_from(self._map, 0)
        if magic != MAGIC or count != len(self.slots):
            raise ValueError(f"{path}: not a watermark file of this catalogue")

    @classmethod
    def publish(cls, path: Path, counts: dict[tuple[str, int], int]) -> Watermarks:
        """The file for a broker just started on the archive: `counts` (the archive's) under
        the next generation. An existing file is written in place: processes that mapped it
        must see the new generation (a replaced file would leave them reading the old one)."""
        keys = slots()
        try:
            marks = cls(path, writable=True)
            generation = marks.generation + 1
        except (OSError, ValueError):
            body = bytearray(_HEADER.pack(MAGIC, 1, len(keys)))
            body += b"".join(_SLOT.pack(counts.get(key, 0)) for key in keys)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(bytes(body))
            os.replace(tmp, path)
            return cls(path, writable=True)
        # The generation first: a wait from before sees it, and fails, before any count.
        _HEADER.pack_into(marks._map, 0, MAGIC, generation, len(keys))
        for key in keys:
            marks.advance(*key, counts.get(key, 0))
        return marks

    @property
    def generation(self) -> int:
        return int(_HEADER.unpack_from(self._map, 0)[1])

    def next_offset(self, topic: str, partition: int) -> int | None:
        """Records of this partition on disk; None for a partition not archived."""
        slot = self.slots.get((topic, partition))
        if slot is None:
            return None
        return int(_SLOT.unpack_from(self._map, _HEADER.size + _SLOT.size * slot)[0])

    def advance(self, topic: str, partition: int, next_offset: int) -> None:
        slot = self.slots.get((topic, partition))
        if slot is not None:
            _SLOT.pack_into(self._map, _HEADER.size + _SLOT.size * slot, next_offset)

    def close(self) -> None:
        self._map.close()


class Gate:
    """Waits for records to be durable. One per process (`Gate.from_env`); waits on
    sends are served by one thread, so a thousand waiting requests cost one poll."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._marks = Watermarks(path)
        #: The generation this process started in: a later one means the broker restarted.
        self.generation = self._marks.generation
        self._lock = threading.Condition()
        self._waiting: list[tuple[str, int, int, Future[Any], Any]] = []
        self._thread: threading.Thread | None = None
        #: Whether an archiver in this process tells this gate when the marks move.
        self._poked = False

    _shared: Gate | None = None
    _shared_path: str | None = None

    @classmethod
    def from_env(cls) -> Gate | None:
        """This process's gate, if it runs under a devnet that publishes watermarks."""
        path = os.environ.get(ENV)
        if not path:
            return None
        shared = cls._shared
        if shared is None or cls._shared_path != path or shared.restarted():
            # A devnet that restarted its broker in this process starts a new generation.
            cls._shared, cls._shared_path = cls(Path(path)), path
        return cls._shared

    def restarted(self) -> bool:
        return self._marks.generation != self.generation

    def durable(self, topic: str, partition: int, offset: int) -> bool:
        """Whether this record is on disk (raises `BrokerRestarted` once the broker has
        been restarted: the record read may not be the one on disk)."""
        if self.restarted():
            raise BrokerRestarted(
                f"the broker was restarted (generation {self._marks.generation}, this "
                f"process began in {self.generation}); {topic}[{partition}]@{offset} "
                "may not be the record on disk"
            )
        mark = self._marks.next_offset(topic, partition)
        return mark is None or offset < mark

    def wait(self, topic: str, partition: int, offset: int, timeout: float = 60.0) -> None:
        """Block until the record is durable; TimeoutError when the archive stalls."""
        deadline = time.monotonic() + timeout
        pause = POLL_S
        while not self.durable(topic, partition, offset):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{topic}[{partition}]@{offset} not on disk after {timeout}s "
                    "(is the devnet's archiver running?)"
                )
            time.sleep(pause)
            # A record the archiver fetches waits up to its fetch interval: look often at
            # first, then less (a dozen processes polling at 2 kHz cost a core's share).
            pause = min(pause * 2, MAX_POLL_S)

    def resolve(
        self, topic: str, partition: int, offset: int, future: Future[Any], value: Any
    ) -> None:
        """Set `future` to `value` once the record is durable (or fail it with
        `BrokerRestarted`)."""
        try:
            if self.durable(topic, partition, offset):
                future.set_result(value)
                return
        except BrokerRestarted as exc:
            future.set_exception(exc)
            return
        with self._lock:
            self._waiting.append((topic, partition, offset, future, value))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="durable", daemon=True)
                self._thread.start()
            self._lock.notify()

    def _serve(self) -> None:
        pause = POLL_S
        while True:
            with self._lock:
                while not self._waiting:
                    pause = POLL_S
                    self._lock.wait()
            if self.settle():
                with self._lock:
                    # With the archiver in this process, `poke` settles and wakes: a look
                    # now and then is only a safety net. Otherwise look often at first,
                    # then less, as `wait` does.
                    self._lock.wait(LOCAL_POLL_S if self._poked else pause)
                pause = min(pause * 2, MAX_POLL_S)

    def settle(self) -> bool:
        """Resolve the waits now durable; whether some are left."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
        still = []
        for item in waiting:
            topic, partition, offset, future, value = item
            try:
                if self.durable(topic, partition, offset):
                    future.set_result(value)
                else:
                    still.append(item)
            except BrokerRestarted as exc:
                future.set_exception(exc)
        if still:
            with self._lock:
                self._waiting[:0] = still
        return bool(still)

    def poke(self) -> None:
        """The watermarks moved (the archiver, in this process): settle in the caller's
        thread (one hand-over fewer on every acknowledgement), and wake the waiting
        thread."""
        self._poked = True
        self.settle()
        with self._lock:
            self._lock.notify()


def poke() -> None:
    """Tell this process's gate, if it has one, that the watermarks moved."""
    if Gate._shared is not None:
        Gate._shared.poke()
