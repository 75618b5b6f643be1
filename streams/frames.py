"""Records as the devnet archives them, and the frame they travel in: the archive's
journal (`streams.archive`) and the hand-over socket (`streams.handover`) share it.

A frame is ``u32 body length | u32 CRC-32 of body | body``; a record's body is ``i64
offset | i64 timestamp ms | i32 key length (-1 = null) | key | i32 value length | value |
u16 header count | (u16 name length | name | u32 length | value)*``, little-endian; a
*placed* record's body puts ``u16 topic length | topic | u32 partition`` before it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FRAME = struct.Struct("<II")
_FIXED = struct.Struct("<qq")
_LEN = struct.Struct("<i")
_HCOUNT = struct.Struct("<H")
_HNAME = struct.Struct("<H")
_HVALUE = struct.Struct("<I")
_PARTITION = struct.Struct("<I")


@dataclass(frozen=True)
class ArchivedRecord:
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def body(self) -> bytes:
        parts = [_FIXED.pack(self.offset, self.timestamp_ms)]
        for blob in (self.key, self.value):
            parts.append(_LEN.pack(-1 if blob is None else len(blob)))
            parts.append(blob or b"")
        parts.append(_HCOUNT.pack(len(self.headers)))
        for name, value in self.headers:
            raw = name.encode()
            parts += [_HNAME.pack(len(raw)), raw, _HVALUE.pack(len(value)), value]
        return b"".join(parts)

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
    def from_message(
        cls, message: Any, headers: Sequence[tuple[str, bytes]] | None = None
    ) -> ArchivedRecord:
        """A consumed message, or a delivery report with the headers it was sent with
        (reports do not carry them)."""
        kind, timestamp = message.timestamp()
        if headers is None:
            headers = [(k, v or b"") for k, v in (message.headers() or [])]
        return cls(
            message.offset(),
            timestamp if kind else 0,
            message.key(),
            message.value(),
            tuple(headers),
        )


def frame(body: bytes) -> bytes:
    return FRAME.pack(len(body), zlib.crc32(body)) + body


def frames_of(path: Path) -> Iterator[tuple[int, bytes]]:
    """(end position, body) of every intact frame of a file, stopping at the first torn
    one or at space allocated ahead (a length of 0)."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        pos = 0
        while len(head := f.read(FRAME.size)) == FRAME.size:
            length, crc = FRAME.unpack(head)
            body = f.read(length)
            if length == 0 or len(body) < length or zlib.crc32(body) != crc:
                return
            pos += FRAME.size + length
            yield pos, body


def placement(topic: str, partition: int) -> bytes:
    name = topic.encode()
    return _HNAME.pack(len(name)) + name + _PARTITION.pack(partition)


def placed_frame(topic: str, partition: int, record: ArchivedRecord) -> bytes:
    return frame(placement(topic, partition) + record.body())


def placed_record(body: bytes) -> tuple[str, int, ArchivedRecord]:
    (name_length,) = _HNAME.unpack_from(body, 0)
    pos = _HNAME.size + name_length
    (partition,) = _PARTITION.unpack_from(body, pos)
    topic = body[_HNAME.size : pos].decode()
    return topic, partition, ArchivedRecord.decode(body[pos + _PARTITION.size :])


def placed_records(buffer: bytearray) -> tuple[list[tuple[str, int, ArchivedRecord]], int]:
    """The whole placed frames at the start of a stream's `buffer` and the bytes they
    took (a socket's reads split frames anywhere). Raises ValueError on one that does not
    decode: the sender is not a Lattice process, or not this version of one."""
    out = []
    pos = 0
    while len(buffer) - pos >= FRAME.size:
        length, _ = FRAME.unpack_from(buffer, pos)
        end = pos + FRAME.size + length
        if end > len(buffer):
            break
        try:
            out.append(placed_record(bytes(buffer[pos + FRAME.size : end])))
        except (ValueError, struct.error) as exc:
            raise ValueError(f"a frame that does not decode: {exc}") from exc
        pos = end
    return out, pos
