"""A naive ancestry index that stores every block's whole past (reference only).

It answers `is_dag_ancestor` by set membership, so it is obviously right and needs no
cleverness; it costs O(n) memory per block. The tests use it as an oracle for the real index
(`processors.dag.reachability`), and `bench/bench_ghostdag.py` measures the real index beside
it. Nothing in the running system uses it.
"""

from __future__ import annotations

from collections.abc import Iterable

from processors.dag.reachability import Hash


class PastSets:
    def __init__(self, genesis: Hash) -> None:
        self._past: dict[Hash, frozenset[Hash]] = {genesis: frozenset()}
        self._selected: dict[Hash, Hash] = {}

    def add(self, block: Hash, selected_parent: Hash, merged: Iterable[Hash]) -> None:
        # past(block) = past(selected parent) + selected parent + mergeset: the mergeset
        # is exactly what the selected parent's past misses.
        self._past[block] = self._past[selected_parent] | {selected_parent, *merged}
        self._selected[block] = selected_parent

    def is_dag_ancestor(self, a: Hash, b: Hash) -> bool:
        return a == b or a in self._past[b]

    def is_chain_ancestor(self, a: Hash, b: Hash) -> bool:
        current: Hash | None = b
        while current is not None:
            if current == a:
                return True
            current = self._selected.get(current)
        return False

    def prune_below(self, root: Hash) -> list[Hash]:
        keep = {root} | {b for b, past in self._past.items() if root in past}
        dropped = [b for b in self._past if b not in keep]
        for b in dropped:
            del self._past[b]
        self._past = {b: past & keep for b, past in self._past.items()}
        return dropped
