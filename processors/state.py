"""State stores: where processors keep their state, input offsets and outbox.

`RocksStore` is durable: a rocksdict database written in atomic, synced batches. Every
change a processor makes for a batch of inputs goes into one `WriteBatch` together with the
inputs' offsets and the outputs they caused (the outbox), so after a crash the store holds
exactly the inputs it says it applied and the outputs they owe the log.

`MemoryStore` keeps the same things in memory, for processors that rebuild their state
from the log at every start (the gateway's views among them) and for unit tests of cores.

Keys under `offset/`, `outbox/`, `delivered/` and `meta/` are the store's own; a processor
uses any other prefix (`evm/`, `block/`, ...).
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from rocksdict import Checkpoint, Options, Rdict, WriteBatch, WriteOptions

from processors.abc import Outgoing, Partition, State, StateStore
from streams.kafka import Delivered

_OFFSET = b"offset/"
_OUTBOX = b"outbox/"
_DELIVERED = b"delivered/"
_SEQUENCE = b"meta/sequence"
_IDENTITY = b"meta/identity"
_INT = struct.Struct(">q")
_HEAD = struct.Struct(">HiiqB")  # topic length, partition, key length, timestamp, has cause
_CAUSE = struct.Struct(">Hiqi")  # cause topic length, partition, offset, output index
_NONE = -1


def _partition_key(prefix: bytes, topic: str, partition: int) -> bytes:
    return prefix + f"{topic}/{partition}".encode()


def _parse_partition(key: bytes, prefix: bytes) -> Partition:
    topic, _, partition = key[len(prefix) :].decode().rpartition("/")
    return topic, int(partition)


def encode_outgoing(entry: Outgoing) -> bytes:
    topic = entry.topic.encode()
    key = entry.key.encode() if entry.key is not None else b""
    stamp = entry.timestamp_ms if entry.timestamp_ms is not None else _NONE
    parts = [
        _HEAD.pack(
            len(topic),
            entry.partition,
            len(key) if entry.key is not None else _NONE,
            stamp,
            entry.cause is not None,
        ),
        topic,
        key,
    ]
    if entry.cause is not None:
        cause_topic = entry.cause[0].encode()
        parts += [_CAUSE.pack(len(cause_topic), *entry.cause[1:]), cause_topic]
    parts.append(entry.value)
    return b"".join(parts)


def decode_outgoing(sequence: int, data: bytes) -> Outgoing:
    topic_length, partition, key_length, stamp, has_cause = _HEAD.unpack_from(data)
    at = _HEAD.size
    topic = data[at : at + topic_length].decode()
    at += topic_length
    key = None
    if key_length != _NONE:
        key = data[at : at + key_length].decode()
        at += key_length
    cause = None
    if has_cause:
        cause_length, cause_partition, cause_offset, index = _CAUSE.unpack_from(data, at)
        at += _CAUSE.size
        cause = (data[at : at + cause_length].decode(), cause_partition, cause_offset, index)
        at += cause_length
    timestamp = None if stamp == _NONE else stamp
    return Outgoing(sequence, topic, partition, key, data[at:], timestamp, cause)


class _Pending:
    """Writes not yet committed, readable before they are (`None` marks a delete)."""

    def __init__(self) -> None:
        self.writes: dict[bytes, bytes | None] = {}

    def merged(
        self, committed: Iterator[tuple[bytes, bytes]], prefix: bytes
    ) -> Iterator[tuple[bytes, bytes]]:
        """`committed` (keys in order under `prefix`) with the pending writes applied."""
        mine = sorted(k for k in self.writes if k.startswith(prefix))
        if not mine:
            yield from committed
            return
        at = 0
        for key, value in committed:
            while at < len(mine) and mine[at] < key:
                written = self.writes[mine[at]]
                if written is not None:
                    yield mine[at], written
                at += 1
            if at < len(mine) and mine[at] == key:
                written = self.writes[key]
                if written is not None:
                    yield key, written
                at += 1
            else:
                yield key, value
        for key in mine[at:]:
            written = self.writes[key]
            if written is not None:
                yield key, written


class RocksStore(State, StateStore):
    """A processor's durable state: a rocksdict store written in synced atomic batches."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = Rdict(str(path / "rocksdb"), options=Options(raw_mode=True))
        durable = WriteOptions()
        durable.sync = True
        self._db.set_write_options(durable)
        self._pending = _Pending()
        identity = self._db.get(_IDENTITY)
        if identity is None:
            identity = os.urandom(8).hex().encode()
            self._db[_IDENTITY] = identity
        self._identity = bytes(identity).decode()

    def identity(self) -> str:
        return self._identity

    # -- State ------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        if key in self._pending.writes:
            return self._pending.writes[key]
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def get_int(self, key: bytes, default: int = 0) -> int:
        raw = self.get(key)
        return default if raw is None else int(_INT.unpack(raw)[0])

    def put_int(self, key: bytes, number: int) -> None:
        self.put(key, _INT.pack(number))

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self._pending.merged(self._committed(prefix), prefix)

    def _committed(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        iterator = self._db.iter()
        iterator.seek(prefix)
        while iterator.valid():
            key = bytes(iterator.key())
            if not key.startswith(prefix):
                break
            yield key, bytes(iterator.value())
            iterator.next()
        del iterator

    def put(self, key: bytes, value: bytes) -> None:
        self._pending.writes[key] = value

    def delete(self, key: bytes) -> None:
        self._pending.writes[key] = None

    # -- StateStore -------------------------------------------------------------------------

    def positions(self) -> dict[Partition, int]:
        return {
            _parse_partition(key, _OFFSET): int(_INT.unpack(value)[0])
            for key, value in self._committed(_OFFSET)
        }

    def offset(self, topic: str, partition: int) -> int | None:
        """The last applied offset of a partition, or None if nothing was applied."""
        raw = self._db.get(_partition_key(_OFFSET, topic, partition))
        return None if raw is None else int(_INT.unpack(raw)[0])

    def outbox(self) -> list[Outgoing]:
        return [
            decode_outgoing(int(key[len(_OUTBOX) :]), value)
            for key, value in self._committed(_OUTBOX)
        ]

    def delivered(self) -> dict[Partition, int]:
        return {
            _parse_partition(key, _DELIVERED): int(_INT.unpack(value)[0])
            for key, value in self._committed(_DELIVERED)
        }

    def next_sequence(self) -> int:
        raw = self._db.get(_SEQUENCE)
        return 0 if raw is None else int(_INT.unpack(raw)[0])

    def commit(
        self,
        positions: Mapping[Partition, int],
        outgoing: Sequence[Outgoing] = (),
        acknowledged: Mapping[int, Delivered] | None = None,
    ) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in self._pending.writes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for (topic, partition), offset in positions.items():
            batch.put(_partition_key(_OFFSET, topic, partition), _INT.pack(offset))
        for entry in outgoing:
            batch.put(_OUTBOX + b"%016d" % entry.sequence, encode_outgoing(entry))
        if outgoing:
            batch.put(_SEQUENCE, _INT.pack(outgoing[-1].sequence + 1))
        for sequence, where in (acknowledged or {}).items():
            batch.delete(_OUTBOX + b"%016d" % sequence)
            batch.put(
                _partition_key(_DELIVERED, where.topic, where.partition), _INT.pack(where.offset)
            )
        self._db.write(batch)
        self._pending = _Pending()

    def copy_to(self, path: Path) -> None:
        """A consistent copy of what is committed (a RocksDB checkpoint: hard links)."""
        Checkpoint(self._db).create_checkpoint(str(path))

    def adopt(self) -> None:
        """Make a store copied from another host this one's: a new identity (its outputs'
        sequence headers must not pass for the other's) and no outbox (what the other had
        not sent is the other's to send)."""
        batch = WriteBatch(raw_mode=True)
        for key, _ in self._committed(_OUTBOX):
            batch.delete(key)
        self._identity = os.urandom(8).hex()
        batch.put(_IDENTITY, self._identity.encode())
        self._db.write(batch)

    def close(self) -> None:
        self._db.close()


class MemoryStore(State, StateStore):
    """The same contract in memory: it starts empty, so its processor rebuilds from the log."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []  # sorted, for scans
        self._positions: dict[Partition, int] = {}
        self._outbox: dict[int, Outgoing] = {}
        self._delivered: dict[Partition, int] = {}
        self._sequence = 0
        self._identity = os.urandom(8).hex()

    def identity(self) -> str:
        return self._identity

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        at = bisect.bisect_left(self._keys, prefix)
        found = []
        while at < len(self._keys) and self._keys[at].startswith(prefix):
            found.append((self._keys[at], self._data[self._keys[at]]))
            at += 1
        return iter(found)

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self._data:
            bisect.insort(self._keys, key)
        self._data[key] = value

    def delete(self, key: bytes) -> None:
        if self._data.pop(key, None) is not None:
            self._keys.pop(bisect.bisect_left(self._keys, key))

    def positions(self) -> dict[Partition, int]:
        return dict(self._positions)

    def outbox(self) -> list[Outgoing]:
        return [self._outbox[s] for s in sorted(self._outbox)]

    def delivered(self) -> dict[Partition, int]:
        return dict(self._delivered)

    def next_sequence(self) -> int:
        return self._sequence

    def commit(
        self,
        positions: Mapping[Partition, int],
        outgoing: Sequence[Outgoing] = (),
        acknowledged: Mapping[int, Delivered] | None = None,
    ) -> None:
        self._positions.update(positions)
        for entry in outgoing:
            self._outbox[entry.sequence] = entry
            self._sequence = entry.sequence + 1
        for sequence, where in (acknowledged or {}).items():
            self._outbox.pop(sequence, None)
            self._delivered[(where.topic, where.partition)] = where.offset
