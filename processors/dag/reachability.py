"""Ancestor queries over a growing block DAG (pure core).

Two structures, as in Kaspa:

- The *selected-parent tree*: every block hangs under its GHOSTDAG selected parent. "Is A on
  B's selected chain" is a level-ancestor query on that tree, answered with skew-binary jump
  pointers (Myers, 1983): each block stores one extra pointer, set in O(1) when it is added,
  and a query takes O(log depth) hops. Unlike interval labelling it never needs reindexing, so
  adding a block costs the same whatever the shape of the tree.
- *Mergers* (Kaspa's future covering sets): the blocks whose mergeset contains a block. Every
  block in B's past is either on B's selected chain or in the mergeset of exactly one block of
  that chain, so A is in B's past iff A, or one of A's mergers, is on B's selected chain.

Blocks can be pruned from the bottom (below the finality point): queries never walk below the
lowest retained depth, and asking about a pruned block is an error, not a wrong answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

Hash = bytes


class ReachabilityIndex(Protocol):
    """What GHOSTDAG asks of an ancestry index."""

    def add(self, block: Hash, selected_parent: Hash, merged: Iterable[Hash]) -> None:
        """Index a block, given its selected parent and the rest of its mergeset."""

    def is_dag_ancestor(self, a: Hash, b: Hash) -> bool:
        """Whether `a` is in `b`'s past, or is `b`."""
        ...

    def is_chain_ancestor(self, a: Hash, b: Hash) -> bool:
        """Whether `a` is on `b`'s selected chain, or is `b`."""
        ...

    def prune_below(self, root: Hash) -> list[Hash]:
        """Forget what lies below `root`; returns the blocks dropped."""
        ...


class UnknownBlock(KeyError):
    """A query named a block the index does not hold (never added, or pruned)."""


class Reachability:
    def __init__(self, genesis: Hash) -> None:
        self._parent: dict[Hash, Hash | None] = {genesis: None}
        self._depth: dict[Hash, int] = {genesis: 0}
        self._jump: dict[Hash, Hash] = {genesis: genesis}
        self._mergers: dict[Hash, list[Hash]] = {}

    def __contains__(self, block: object) -> bool:
        return block in self._depth

    def __len__(self) -> int:
        return len(self._depth)

    def depth(self, block: Hash) -> int:
        """Length of the block's selected chain down to the genesis (or the pruning root)."""
        try:
            return self._depth[block]
        except KeyError:
            raise UnknownBlock(block.hex()) from None

    def add(self, block: Hash, selected_parent: Hash, merged: Iterable[Hash]) -> None:
        """Index a new block: its selected parent and its mergeset without the selected parent."""
        depth = self.depth(selected_parent) + 1
        jump = self._jump[selected_parent]
        # Skew-binary rule: jump twice as far when the two jumps below are equally long.
        if self._depth[selected_parent] - self._depth[jump] == (
            self._depth[jump] - self._depth[self._jump[jump]]
        ):
            jump = self._jump[jump]
        else:
            jump = selected_parent
        self._parent[block] = selected_parent
        self._depth[block] = depth
        self._jump[block] = jump
        for m in merged:
            self._mergers.setdefault(m, []).append(block)

    def is_chain_ancestor(self, a: Hash, b: Hash) -> bool:
        """Whether `a` is on `b`'s selected chain (`a == b` included)."""
        depth = self._depth
        target = self.depth(a)
        x = b
        dx = self.depth(b)
        if dx < target:
            return False
        jump, parent = self._jump, self._parent
        while dx > target:
            j = jump[x]
            x = j if depth[j] >= target else parent[x]  # type: ignore[assignment]
            dx = depth[x]
        return x == a

    def is_dag_ancestor(self, a: Hash, b: Hash) -> bool:
        """Whether `a` is in `b`'s past (`a == b` included)."""
        if self.is_chain_ancestor(a, b):
            return True
        return any(self.is_chain_ancestor(m, b) for m in self._mergers.get(a, ()))

    def prune_below(self, root: Hash) -> list[Hash]:
        """Keep only `root` and its descendants in the selected-parent tree; returns the
        blocks dropped.

        Side branches that leave the chain below `root` go too: after finality no valid
        block can merge them. Jump pointers into the dropped part are redirected to `root`
        (still an ancestor, so queries stay exact; only their hop count can grow a little).
        """
        keep = {b for b in self._depth if self.is_chain_ancestor(root, b)}
        doomed = [b for b in self._depth if b not in keep]
        for b in doomed:
            del self._depth[b], self._parent[b], self._jump[b]
            self._mergers.pop(b, None)
        self._parent[root] = None
        self._jump[root] = root
        for b in keep:
            if self._jump[b] not in keep:
                self._jump[b] = root
        for b, mergers in list(self._mergers.items()):
            self._mergers[b] = [m for m in mergers if m in keep]
        return doomed
