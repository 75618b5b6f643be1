"""Inputs whose effect is not on the log yet (pure core).

A proposer's mempool lives in memory, so the transactions it read are safe only once a
block carrying them is on the log. Until then their offsets are *held*: the group may not
move past the oldest held offset of a partition, and a proposer that dies (or loses the
partition) leaves them to be read again. What is read again and already in a block is
dropped by the mempool as stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

Partition = tuple[str, int]


@dataclass
class Holds:
    #: Per partition, the held keys and their offsets.
    _by_partition: dict[Partition, dict[bytes, int]] = field(default_factory=dict)
    _where: dict[bytes, Partition] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._where)

    def hold(self, key: bytes, partition: Partition, offset: int) -> None:
        """Hold `offset` of `partition` until `key` is released (a key held again keeps its
        first offset: the oldest read is the one to resume from)."""
        if key in self._where:
            return
        self._where[key] = partition
        self._by_partition.setdefault(partition, {})[key] = offset

    def release(self, keys: Iterable[bytes]) -> None:
        for key in keys:
            partition = self._where.pop(key, None)
            if partition is not None:
                del self._by_partition[partition][key]

    def oldest(self, partition: Partition) -> int | None:
        """The oldest offset still held in `partition` (None: nothing held)."""
        held = self._by_partition.get(partition)
        if not held:
            return None
        return min(held.values())
