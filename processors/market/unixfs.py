"""UnixFS files as Kubo's `ipfs add` builds them by default, so a file's CID here is the CID
an IPFS user gets for the same bytes (pure core: bytes in, blocks and CIDs out).

Kubo's defaults (checked against Kubo 0.22 in `tests/processors/market/test_unixfs.py`):
fixed-size chunks of 256 KiB; every chunk a dag-pb leaf holding a UnixFS `File` message with
the chunk's bytes; a balanced tree of dag-pb nodes of at most 174 links each above them, each
a UnixFS `File` message with the total size and every child's size, its links carrying the
child's CID and the bytes of the child's whole subtree; CIDv0 (the base58btc sha2-256
multihash of the root block). A file of one chunk is its leaf. dag-pb writes a node's links
before its data (protobuf field 2 before field 1), as the format has always been written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

CHUNK = 256 * 1024
MAX_LINKS = 174
_FILE = 2  # UnixFS Data.DataType.File
_SHA2_256 = b"\x12\x20"  # multihash: sha2-256, 32 bytes
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@dataclass(frozen=True)
class Node:
    """A block of the file's tree: its multihash (a CIDv0's bytes), the file bytes under it,
    and the bytes of its whole subtree (what a link to it records as `Tsize`)."""

    multihash: bytes
    file_size: int
    tree_size: int

    @property
    def cid(self) -> str:
        return base58(self.multihash)


def base58(data: bytes) -> str:
    """Bitcoin's base58 alphabet, leading zero bytes as "1"s (how CIDv0 is spelt)."""
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, digit = divmod(number, 58)
        out = _BASE58[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def unbase58(text: str) -> bytes:
    """`base58`'s inverse (ValueError for a character outside the alphabet)."""
    number = 0
    for char in text:
        number = number * 58 + _BASE58.index(char)
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _number(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _file_data(data: bytes, file_size: int, block_sizes: Iterable[int] = ()) -> bytes:
    """A UnixFS `Data` message of type File (its data only when there is some)."""
    out = _number(1, _FILE) + (_bytes(2, data) if data else b"") + _number(3, file_size)
    return out + b"".join(_number(4, size) for size in block_sizes)


def _dag_pb(links: Iterable[Node], data: bytes) -> bytes:
    """A dag-pb node: each link (hash, empty name, subtree size), then the data."""
    encoded = (
        _bytes(2, _bytes(1, link.multihash) + _bytes(2, b"") + _number(3, link.tree_size))
        for link in links
    )
    return b"".join(encoded) + _bytes(1, data)


def chunks_of(reads: Iterable[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """Fixed-size chunks of a stream read in pieces of any size (the last may be short;
    an empty stream is one empty chunk, as Kubo adds an empty file)."""
    pending = bytearray()
    sent = False
    for piece in reads:
        pending += piece
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
            sent = True
    if pending or not sent:
        yield bytes(pending)


class _Builder:
    """Kubo's balanced layout over a stream of chunks: the first leaf is the root of depth
    0; while chunks remain, a new root takes the old one as its first child and fills up
    to `MAX_LINKS` children with subtrees one level shallower than itself."""

    def __init__(self, chunks: Iterator[bytes], put: Callable[[Node, bytes], None] | None):
        self.chunks = chunks
        self.put = put
        self.next: bytes | None = next(chunks, None)

    def done(self) -> bool:
        return self.next is None

    def leaf(self) -> Node:
        assert self.next is not None
        data, self.next = self.next, next(self.chunks, None)
        return self.node([], _file_data(data, len(data)), len(data))

    def node(self, links: list[Node], data: bytes, file_size: int) -> Node:
        block = _dag_pb(links, data)
        node = Node(
            _SHA2_256 + hashlib.sha256(block).digest(),
            file_size,
            len(block) + sum(link.tree_size for link in links),
        )
        if self.put is not None:
            self.put(node, block)
        return node

    def fill(self, children: list[Node], depth: int) -> Node:
        while len(children) < MAX_LINKS and not self.done():
            children.append(self.leaf() if depth == 1 else self.fill([], depth - 1))
        size = sum(child.file_size for child in children)
        data = _file_data(b"", size, (child.file_size for child in children))
        return self.node(children, data, size)

    def root(self) -> Node:
        root, depth = self.leaf(), 1
        while not self.done():
            root, depth = self.fill([root], depth), depth + 1
        return root


def add(reads: Iterable[bytes], put: Callable[[Node, bytes], None] | None = None) -> Node:
    """The root of the file `reads` yields (in pieces of any size), as `ipfs add` makes it;
    `put` receives every block of the tree, leaves first."""
    return _Builder(chunks_of(reads), put).root()


def cid_of_file(data: bytes) -> str:
    """The CID `ipfs add` prints for `data`."""
    return add([data]).cid
