"""GHOSTDAG, with Kaspa's exact semantics (pure core: no Kafka, no storage).

For a new block:
- the *selected parent* is the parent with the highest (blue work, hash);
- its *mergeset* is every block in its past that is not in the selected parent's past (nor
  the selected parent itself), taken in ascending (blue work, hash) order;
- each mergeset block is coloured in that order: blue unless the block already has K + 1
  blues, or the candidate would have more than K blues in its anticone, or it would push some
  blue's anticone over K (the k-cluster rule); the selected parent is blue and first;
- blue score = selected parent's blue score + number of mergeset blues; blue work likewise
  with each blue's work (unit work, or 2^256 / (target + 1) from a block's target).

Hashes compare as 32-byte strings. The *consensus order* of a chain block is its mergeset
(without the selected parent) in ascending (blue work, hash), then the chain block itself.
A block whose parents are not an antichain, or whose mergeset exceeds
max(180, min(512, 2K)) blocks, is invalid.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from processors.dag.reachability import Hash, Reachability, ReachabilityIndex

DEFAULT_K = 18
UNIT_WORK = 1


def mergeset_limit(k: int) -> int:
    """Kaspa's bound on a block's mergeset size, selected parent included."""
    return max(180, min(512, 2 * k))


def work_from_target(target: int) -> int:
    """Expected hashes to meet `target`: 2^256 / (target + 1), as Bitcoin and Kaspa count."""
    if target < 0:
        raise ValueError("target must be non-negative")
    return (1 << 256) // (target + 1)


class InvalidBlock(ValueError):
    """A block that can never be part of the DAG; `code` says which rule it breaks."""

    def __init__(self, code: str, message: str, blocks: Sequence[Hash] = ()) -> None:
        super().__init__(message)
        self.code = code
        #: The other blocks the rule involves (e.g. the two offending parents).
        self.blocks = tuple(blocks)


class MissingParents(LookupError):
    """A block whose parents have not all arrived yet (it may become valid later)."""

    def __init__(self, block: Hash, missing: Sequence[Hash]) -> None:
        super().__init__(f"block {block.hex()} waits for {len(missing)} parent(s)")
        self.block = block
        self.missing = tuple(missing)


@dataclass(frozen=True)
class GhostdagData:
    """What GHOSTDAG knows about one block."""

    selected_parent: Hash | None
    blue_score: int
    blue_work: int
    #: Mergeset blues in colouring order, selected parent first.
    mergeset_blues: tuple[Hash, ...]
    #: Mergeset reds in colouring order (ascending blue work, hash).
    mergeset_reds: tuple[Hash, ...]
    #: Anticone size (in blues) of each mergeset blue, as seen from this block.
    blues_anticone_sizes: Mapping[Hash, int]

    def sort_key(self, block: Hash) -> tuple[int, Hash]:
        return (self.blue_work, block)


class Ghostdag:
    """A growing DAG coloured by GHOSTDAG."""

    def __init__(
        self,
        genesis: Hash,
        k: int = DEFAULT_K,
        genesis_work: int = UNIT_WORK,
        reachability: ReachabilityIndex | None = None,
    ) -> None:
        if k < 1:
            raise ValueError("K must be at least 1")
        self.k = k
        self.genesis = genesis
        self.limit = mergeset_limit(k)
        self.data: dict[Hash, GhostdagData] = {genesis: GhostdagData(None, 0, 0, (), (), {})}
        self.parents: dict[Hash, tuple[Hash, ...]] = {genesis: ()}
        self.work: dict[Hash, int] = {genesis: genesis_work}
        self.reachability: ReachabilityIndex = reachability or Reachability(genesis)

    def __contains__(self, block: object) -> bool:
        return block in self.data

    def __len__(self) -> int:
        return len(self.data)

    def is_ancestor(self, a: Hash, b: Hash) -> bool:
        """Whether `a` is in `b`'s past (or is `b`)."""
        if a != b and self.data[a].blue_work >= self.data[b].blue_work:
            return False  # blue work strictly grows along every edge
        return self.reachability.is_dag_ancestor(a, b)

    def add(self, block: Hash, parents: Sequence[Hash], work: int = UNIT_WORK) -> GhostdagData:
        """Colour and insert `block`; raises `InvalidBlock` or `MissingParents`."""
        if block in self.data:
            raise InvalidBlock("duplicate", f"block {block.hex()} is already in the DAG")
        self.check_parents(block, parents)
        selected = max(parents, key=lambda p: self.data[p].sort_key(p))
        mergeset = self.mergeset(block, selected, parents)
        data = self._colour(selected, mergeset)
        self.data[block] = data
        self.parents[block] = tuple(parents)
        self.work[block] = work
        self.reachability.add(block, selected, mergeset)
        return data

    def check_parents(self, block: Hash, parents: Sequence[Hash]) -> None:
        if not parents:
            raise InvalidBlock("no_parents", f"block {block.hex()} has no parents")
        if len(set(parents)) != len(parents):
            raise InvalidBlock("duplicate_parent", f"block {block.hex()} lists a parent twice")
        missing = [p for p in parents if p not in self.data]
        if missing:
            raise MissingParents(block, missing)
        for i, a in enumerate(parents):
            for b in parents[i + 1 :]:
                if self.is_ancestor(a, b) or self.is_ancestor(b, a):
                    raise InvalidBlock(
                        "not_antichain",
                        f"block {block.hex()}: parent {a.hex()} and parent {b.hex()} "
                        "are ancestor and descendant",
                        (a, b),
                    )

    def mergeset(self, block: Hash, selected: Hash, parents: Iterable[Hash]) -> list[Hash]:
        """The mergeset without the selected parent, in ascending (blue work, hash)."""
        queue = deque(p for p in parents if p != selected)
        found = set(queue)
        in_selected_past: set[Hash] = set()
        # Checked as the set grows, so a huge mergeset costs no more than the limit to refuse.
        while len(found) + 1 <= self.limit and queue:
            for parent in self.parents[queue.popleft()]:
                if parent in found or parent in in_selected_past:
                    continue
                if parent not in self.data:
                    continue  # pruned: below the finality point, so in the selected past

                if self.is_ancestor(parent, selected):
                    in_selected_past.add(parent)
                    continue
                found.add(parent)
                queue.append(parent)
        if len(found) + 1 > self.limit:
            raise InvalidBlock(
                "mergeset_too_large", f"block {block.hex()} merges more than {self.limit} blocks"
            )
        data = self.data
        return sorted(found, key=lambda h: (data[h].blue_work, h))

    def _colour(self, selected: Hash, mergeset: list[Hash]) -> GhostdagData:
        k = self.k
        blues = [selected]
        reds: list[Hash] = []
        anticone_sizes = {selected: 0}
        for candidate in mergeset:
            if len(blues) == k + 1:
                reds.append(candidate)
                continue
            verdict = self._blue_anticone(candidate, selected, blues, anticone_sizes)
            if verdict is None:
                reds.append(candidate)
                continue
            blues.append(candidate)
            anticone_sizes[candidate] = len(verdict)
            for blue, size in verdict.items():
                anticone_sizes[blue] = size + 1
        sp = self.data[selected]
        work = self.work
        return GhostdagData(
            selected_parent=selected,
            blue_score=sp.blue_score + len(blues),
            blue_work=sp.blue_work + sum(work[b] for b in blues),
            mergeset_blues=tuple(blues),
            mergeset_reds=tuple(reds),
            blues_anticone_sizes=anticone_sizes,
        )

    def _blue_anticone(
        self, candidate: Hash, selected: Hash, blues: list[Hash], sizes: dict[Hash, int]
    ) -> dict[Hash, int] | None:
        """The blues in the candidate's anticone with their anticone sizes, or None if the
        candidate must be red.

        Walks the selected chain down from the new block, looking at each chain block's
        mergeset blues, until a chain block is in the candidate's past: every blue below it
        is then in the candidate's past too.
        """
        k = self.k
        found: dict[Hash, int] = {}
        chain_blues: Sequence[Hash] = blues
        next_chain: Hash | None = selected
        while True:
            for blue in chain_blues:
                if self.is_ancestor(blue, candidate):
                    continue
                size = self._anticone_size(blue, sizes, selected)
                found[blue] = size
                if len(found) > k or size == k:
                    return None
            if next_chain is None or self.is_ancestor(next_chain, candidate):
                return found
            chain = self.data[next_chain]
            chain_blues = chain.mergeset_blues
            next_chain = chain.selected_parent

    def _anticone_size(self, blue: Hash, sizes: Mapping[Hash, int], selected: Hash) -> int:
        """`blue`'s anticone size in the new block's context: the first chain block (from
        the new block down) that coloured it knows it."""
        current: Hash | None = selected
        while blue not in sizes:
            if current is None:
                raise AssertionError(f"{blue.hex()} is not in the blue set of this context")
            data = self.data[current]
            sizes, current = data.blues_anticone_sizes, data.selected_parent
        return sizes[blue]

    def prune(self, root: Hash) -> list[Hash]:
        """Forget every block that is not `root` or in its future along the selected-parent
        tree; returns them. `root` must be final: nothing later may merge below it."""
        dropped = self.reachability.prune_below(root)
        for block in dropped:
            del self.data[block], self.parents[block], self.work[block]
        return dropped

    def consensus_order(self, chain_block: Hash) -> list[Hash]:
        """The blocks a chain block orders: its mergeset (reds included) without the selected
        parent, ascending by (blue work, hash), then the chain block itself."""
        data = self.data[chain_block]
        merged = list(data.mergeset_blues[1:]) + list(data.mergeset_reds)
        merged.sort(key=lambda h: (self.data[h].blue_work, h))
        return [*merged, chain_block]
