"""A processor's durable state: a rocksdict store written in atomic batches.

Every change a processor makes for an input record goes into one `WriteBatch` together with
that record's offset, so after a crash the store reflects exactly the inputs it says it
applied: the processor resumes after the stored offset and never applies a record twice
(at-least-once delivery made effectively-once). Writes are synced to disk.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

_OFFSET = b"offset/"
_INT = struct.Struct(">q")


class ProcessorState:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = Rdict(str(path / "rocksdb"), options=Options(raw_mode=True))
        durable = WriteOptions()
        durable.sync = True
        self._db.set_write_options(durable)

    def offset(self, topic: str, partition: int) -> int | None:
        """The last applied offset of a partition, or None if nothing was applied."""
        raw = self._db.get(_offset_key(topic, partition))
        return None if raw is None else int(_INT.unpack(raw)[0])

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        return None if value is None else bytes(value)

    def get_int(self, key: bytes, default: int = 0) -> int:
        raw = self._db.get(key)
        return default if raw is None else int(_INT.unpack(raw)[0])

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys and values under a prefix, in key order."""
        iterator = self._db.iter()
        iterator.seek(prefix)
        while iterator.valid():
            key = bytes(iterator.key())
            if not key.startswith(prefix):
                break
            yield key, bytes(iterator.value())
            iterator.next()
        del iterator

    def commit(
        self,
        offsets: Mapping[tuple[str, int], int],
        puts: Mapping[bytes, bytes] | None = None,
        ints: Mapping[bytes, int] | None = None,
        deletes: Iterable[bytes] = (),
    ) -> None:
        """Write state changes and the offsets they reflect, all or nothing."""
        batch = WriteBatch(raw_mode=True)
        for key in deletes:
            batch.delete(key)
        for (topic, partition), offset in offsets.items():
            batch.put(_offset_key(topic, partition), _INT.pack(offset))
        for key, value in (puts or {}).items():
            batch.put(key, value)
        for key, number in (ints or {}).items():
            batch.put(key, _INT.pack(number))
        self._db.write(batch)

    def close(self) -> None:
        self._db.close()


def _offset_key(topic: str, partition: int) -> bytes:
    return _OFFSET + f"{topic}/{partition}".encode()
