"""py-evm's key-value database over a processor's store, with writes held back.

py-evm writes trie nodes, headers and receipts through `AtomicDB`; here they land in an
in-memory overlay instead of the disk. The processor takes the overlay's changes with
`take_changes()` and commits them in the same rocksdict batch as the input offset they
reflect, so the EVM state on disk always matches exactly the ordered blocks applied. Reads
see the overlay first, then the store. The store is reached through a `get` callable, so
this module needs no storage library.
"""

from __future__ import annotations

from collections.abc import Callable

from eth.db.atomic import AtomicDB
from eth.db.backends.base import BaseDB

#: Stands for a deleted key in the overlay.
DELETED = None


class OverlayDB(BaseDB):
    def __init__(self, read: Callable[[bytes], bytes | None]) -> None:
        self._read = read
        self._changes: dict[bytes, bytes | None] = {}

    def __getitem__(self, key: bytes) -> bytes:
        if key in self._changes:
            value = self._changes[key]
            if value is DELETED:
                raise KeyError(key)
            return value
        stored = self._read(key)
        if stored is None:
            raise KeyError(key)
        return stored

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._changes[key] = value

    def __delitem__(self, key: bytes) -> None:
        if key not in self:
            raise KeyError(key)
        self._changes[key] = DELETED

    def _exists(self, key: bytes) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def take_changes(self) -> dict[bytes, bytes | None]:
        """The writes since the last call (None marks a deletion); the overlay empties."""
        changes, self._changes = self._changes, {}
        return changes

    def discard_changes(self) -> None:
        self._changes = {}


def overlay_chain_db(read: Callable[[bytes], bytes | None]) -> tuple[AtomicDB, OverlayDB]:
    overlay = OverlayDB(read)
    return AtomicDB(overlay), overlay
