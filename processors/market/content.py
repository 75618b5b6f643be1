"""Content addressing: IPFS-compatible CIDs and a local blockstore (pure core + files).

Every chunk of model weights, every tokenizer, manifest, job input and output is a raw block
named by a CIDv1 (multicodec `raw` 0x55, multihash sha2-256 0x12), spelt in base32 lower case
with the multibase prefix `b` — the same CID `ipfs add --raw-leaves --cid-version 1` prints
for a file that fits in one block. Files larger than a chunk are split into fixed-size
chunks, each its own raw block; the model manifest lists them in order with offsets.
Anything read back is hashed again, so a block can come from any source, trusted or not.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

RAW = 0x55
SHA2_256 = 0x12
CHUNK_SIZE = 1 << 20  # 1 MiB: IPFS's default maximum block size is 1 MiB as well
_PREFIX = bytes([0x01, RAW, SHA2_256, 32])  # version 1, raw, sha2-256, 32-byte digest


class ContentError(ValueError):
    """A malformed CID, or bytes that do not hash to the CID they were asked for."""


def cid_of(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "b" + base64.b32encode(_PREFIX + digest).decode().lower().rstrip("=")


def digest_of(cid: str) -> bytes:
    """The sha2-256 digest a raw CIDv1 names; raises ContentError for anything else."""
    if not cid.startswith("b") or len(cid) != 59:
        raise ContentError(f"not a base32 CIDv1: {cid!r}")
    body = cid[1:].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError:
        raise ContentError(f"not a base32 CIDv1: {cid!r}") from None
    if raw[:4] != _PREFIX:
        raise ContentError(f"{cid!r} is not a raw sha2-256 CIDv1")
    return raw[4:]


def verify(cid: str, data: bytes) -> bytes:
    """`data` if it is what `cid` names, else ContentError."""
    if hashlib.sha256(data).digest() != digest_of(cid):
        raise ContentError(f"content does not match {cid}")
    return data


@dataclass(frozen=True)
class Chunk:
    cid: str
    offset: int
    size: int


def chunk(data: bytes, size: int = CHUNK_SIZE) -> tuple[tuple[Chunk, bytes], ...]:
    return tuple(
        (Chunk(cid_of(data[i : i + size]), i, len(data[i : i + size])), data[i : i + size])
        for i in range(0, max(len(data), 1), size)
    )


def write_once(target: Path, data: bytes) -> None:
    """Write a content-named file unless it is there: whole or not at all (a rename), so a
    reader never sees half a block."""
    if target.exists():
        return
    target.parent.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, target)


class Blockstore:
    """A directory of blocks named by CID; writes are atomic, reads are verified."""

    def __init__(self, root: Path, mirror: Callable[[str, bytes], None] | None = None) -> None:
        """`mirror` also gets every block stored (the node's IPFS peer's repo)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.mirror = mirror

    def path(self, cid: str) -> Path:
        digest_of(cid)  # refuse anything that is not a CID before touching the disk
        return self.root / cid[-2:] / cid

    def has(self, cid: str) -> bool:
        return self.path(cid).exists()

    def put(self, data: bytes) -> str:
        cid = cid_of(data)
        self.put_verified(cid, data)
        return cid

    def put_verified(self, cid: str, data: bytes) -> None:
        verify(cid, data)
        target = self.path(cid)
        if self.mirror is not None:
            self.mirror(cid, data)
        write_once(target, data)

    def get(self, cid: str) -> bytes:
        try:
            data = self.path(cid).read_bytes()
        except FileNotFoundError:
            raise KeyError(cid) from None
        return verify(cid, data)

    def put_file(self, data: bytes) -> tuple[Chunk, ...]:
        """Store `data` as chunks; the chunk list reassembles it."""
        return self.put_stream(io.BytesIO(data))

    def put_stream(
        self, stream: BinaryIO, progress: Callable[[int], None] | None = None
    ) -> tuple[Chunk, ...]:
        """Store what `stream` reads as chunks (`chunk`'s, one at a time in memory: a
        model's weights may be larger than memory allows twice); `progress` hears the
        bytes stored so far after each chunk."""
        chunks: list[Chunk] = []
        offset = 0
        while True:
            part = stream.read(CHUNK_SIZE)
            if not part and chunks:
                return tuple(chunks)
            c = Chunk(cid_of(part), offset, len(part))
            self.put_verified(c.cid, part)
            chunks.append(c)
            offset += len(part)
            if progress is not None:
                progress(offset)
            if not part:  # an empty file is one empty chunk, as `chunk` makes it
                return tuple(chunks)

    def get_file(self, chunks: tuple[Chunk, ...] | list[Chunk]) -> bytes:
        return b"".join(self.get(c.cid) for c in chunks)
