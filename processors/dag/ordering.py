"""From proposed blocks to a final, never-revised consensus order (pure core).

`DagOrderer.accept` takes blocks in whatever order they arrive and returns the chain blocks
that became final, each with its mergeset and transactions in consensus order:

- A block is checked on its own first (`blocks.verify_block`: hash, signature, size); a
  block whose parents have not all arrived waits for them (up to `max_pending` blocks).
- Its timestamp may not be earlier than its latest parent's by more than
  `timestamp_tolerance_ms`, nor later than the time it was logged (the Kafka record
  timestamp) by more than that tolerance. Both bounds use only logged data, so every
  replica judges alike.
- GHOSTDAG colours it (antichain and mergeset limits are enforced there).

**Finality rule.** The selected tip is the tip with the highest (blue work, hash) among the
tips whose selected chain contains the last final chain block. A chain block of the selected
tip's chain is final once the selected tip's blue score exceeds its own by at least
`finality_depth`; final chain blocks are emitted in chain order, each exactly once. A later
block whose chain leaves the final chain can never be selected (Kaspa's finality violation):
its transactions are ordered only if a final-chain block merges it. With honest proposers
and a depth well above the network's delay, every replica finalises the same chain.

Blocks more than `prune_depth` blue score below the last final chain block are pruned, so
memory stays bounded however long the DAG grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eth_hash.auto import keccak

from processors.dag.blocks import verify_block
from processors.dag.ghostdag import Ghostdag, InvalidBlock, MissingParents, work_from_target
from schemas.events import (
    BlockOrdered,
    BlockProposed,
    OrderedTransaction,
    Position,
    VirtualChainChanged,
)


@dataclass(frozen=True)
class Rejection:
    block: bytes
    code: str
    reason: str


@dataclass(frozen=True)
class _Block:
    record: BlockProposed
    position: Position


@dataclass
class DagOrderer:
    genesis: bytes
    k: int = 18
    finality_depth: int = 10
    prune_depth: int = 1000
    timestamp_tolerance_ms: int = 120_000
    max_pending: int = 10_000
    #: Whether `virtual_change` is asked (the DAG processor): final blocks are kept for it.
    follows_virtual: bool = False
    ghostdag: Ghostdag = field(init=False)
    blocks: dict[bytes, _Block] = field(default_factory=dict)
    pending: dict[bytes, _Block] = field(default_factory=dict)
    waiting_on: dict[bytes, set[bytes]] = field(default_factory=dict)
    tips: set[bytes] = field(default_factory=set)
    final: list[bytes] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    #: Final chain blocks already pruned from `final` (so indexes keep counting).
    pruned_final: int = 0
    #: The virtual chain as `virtual_change` last told it: the final index then, and the
    #: chain blocks above it; and how many changes it told.
    told_final: int = 0
    told_chain: list[bytes] = field(default_factory=list)
    changes: int = 0
    #: Chain blocks made final since the last change was told, as ordered (pruning may
    #: drop more of `final` and of the DAG than one call made final).
    untold_final: list[BlockOrdered] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ghostdag = Ghostdag(self.genesis, self.k)
        self.tips = {self.genesis}
        self.final = [self.genesis]

    @property
    def chain_index(self) -> int:
        """Index of the last final chain block (genesis = 0)."""
        return len(self.final) - 1 + self.pruned_final

    def accept(
        self, record: BlockProposed, position: Position, logged_at_ms: int
    ) -> list[BlockOrdered]:
        """Take one proposed block; returns the chain blocks that became final."""
        block = record.hash
        if block in self.blocks or block in self.pending or block == self.genesis:
            return []
        try:
            verify_block(record)
            if record.timestamp_ms > logged_at_ms + self.timestamp_tolerance_ms:
                raise InvalidBlock("future_timestamp", "timestamp is ahead of the log")
        except InvalidBlock as exc:
            self.rejected.append(Rejection(block, exc.code, str(exc)))
            return []
        self._insert(_Block(record, position))
        return self._advance()

    def _insert(self, entry: _Block) -> None:
        ready = [entry]
        while ready:
            current = ready.pop()
            block = current.record.hash
            parents = current.record.parents
            missing = [p for p in parents if p not in self.ghostdag]
            if missing:
                if len(self.pending) >= self.max_pending:
                    self.rejected.append(Rejection(block, "pending_full", "too many waiting"))
                    continue
                self.pending[block] = current
                for parent in missing:
                    self.waiting_on.setdefault(parent, set()).add(block)
                continue
            if not self._add(current):
                continue
            for child in sorted(self.waiting_on.pop(block, ())):
                waiting = self.pending.get(child)
                if waiting is not None and all(p in self.ghostdag for p in waiting.record.parents):
                    del self.pending[child]
                    ready.append(waiting)

    def _add(self, entry: _Block) -> bool:
        record = entry.record
        block = record.hash
        parents = record.parents
        latest = max(self.timestamp_of(p) for p in parents)
        try:
            if record.timestamp_ms < latest - self.timestamp_tolerance_ms:
                raise InvalidBlock("past_timestamp", "timestamp is before its parents'")
            work = 1 if record.target is None else work_from_target(record.target)
            self.ghostdag.add(block, parents, work)
        except (InvalidBlock, MissingParents) as exc:
            self.rejected.append(Rejection(block, getattr(exc, "code", "missing"), str(exc)))
            self._drop_waiting_children(block)
            return False
        self.blocks[block] = entry
        self.tips.difference_update(parents)
        self.tips.add(block)
        return True

    def _drop_waiting_children(self, block: bytes) -> None:
        """Children of an invalid block can never become valid."""
        stack = [block]
        while stack:
            for child in self.waiting_on.pop(stack.pop(), ()):
                if self.pending.pop(child, None) is not None:
                    self.rejected.append(Rejection(child, "invalid_parent", "a parent is invalid"))
                    stack.append(child)

    def timestamp_of(self, block: bytes) -> int:
        entry = self.blocks.get(block)
        return entry.record.timestamp_ms if entry is not None else 0

    def selected_tip(self) -> bytes:
        data = self.ghostdag.data
        last = self.final[-1]
        reach = self.ghostdag.reachability
        eligible = [t for t in self.tips if reach.is_chain_ancestor(last, t)]
        return max(eligible, key=lambda t: (data[t].blue_work, t)) if eligible else last

    def _above_final(self) -> list[bytes]:
        """The selected tip's chain above the last final chain block, oldest first."""
        data = self.ghostdag.data
        chain: list[bytes] = []
        current: bytes | None = self.selected_tip()
        last = self.final[-1]
        while current is not None and current != last:
            chain.append(current)
            current = data[current].selected_parent
        chain.reverse()
        return chain

    def _advance(self) -> list[BlockOrdered]:
        data = self.ghostdag.data
        chain = self._above_final()
        if not chain:
            return []
        horizon = data[chain[-1]].blue_score - self.finality_depth
        # Blue score grows along a chain: the final blocks are a prefix of it.
        newly = [block for block in chain if data[block].blue_score <= horizon]
        out = []
        for chain_block in newly:
            self.final.append(chain_block)
            out.append(self._ordered(chain_block, self.chain_index))
        if self.follows_virtual:
            self.untold_final += out
        if newly:
            self._prune()
        return out

    def virtual_change(self, cause: Position) -> VirtualChainChanged | None:
        """How the virtual selected chain (the final chain, then the selected tip's chain
        above it) changed since this was last asked; None if it did not. The dropped
        blocks are never final ones: a tip whose chain leaves the final chain is never
        selected."""
        if not self.follows_virtual:
            raise RuntimeError("virtual_change asked of an orderer that does not follow it")
        final = self.chain_index
        untold = self.untold_final
        chain = [b.hash for b in untold] + self._above_final()  # above the final last told
        kept = 0
        for old, new in zip(self.told_chain, chain, strict=False):
            if old != new:
                break
            kept += 1
        if kept == len(self.told_chain) == len(chain) and final == self.told_final:
            return None
        fork = self.told_final + kept
        added = tuple(
            untold[i] if i < len(untold) else self._ordered(chain[i], self.told_final + 1 + i)
            for i in range(kept, len(chain))
        )
        self.changes += 1
        self.told_final, self.told_chain = final, chain[final - self.told_final :]
        self.untold_final = []
        return VirtualChainChanged(
            sequence=self.changes,
            fork_index=fork,
            added=added,
            final_index=final,
            final_hash=self.final[-1],
            cause=cause,
        )

    def _ordered(self, chain_block: bytes, chain_index: int) -> BlockOrdered:
        data = self.ghostdag.data[chain_block]
        entry = self.blocks[chain_block]
        transactions = [
            OrderedTransaction(hash=keccak(raw), raw=raw, dag_block=block, index_in_block=index)
            for block in self.ghostdag.consensus_order(chain_block)
            for index, raw in enumerate(self.blocks[block].record.transactions)
        ]
        return BlockOrdered(
            chain_index=chain_index,
            hash=chain_block,
            selected_parent=data.selected_parent,
            blue_score=data.blue_score,
            blue_work=data.blue_work,
            timestamp_ms=entry.record.timestamp_ms,
            proposer=entry.record.proposer,
            mergeset_blues=tuple(data.mergeset_blues),
            mergeset_reds=tuple(data.mergeset_reds),
            transactions=tuple(transactions),
            cause=entry.position,
        )

    def _prune(self) -> None:
        data = self.ghostdag.data
        floor = data[self.final[-1]].blue_score - self.prune_depth
        keep_from = 0
        while (
            keep_from + 1 < len(self.final) and data[self.final[keep_from + 1]].blue_score <= floor
        ):
            keep_from += 1
        if keep_from == 0:
            return
        root = self.final[keep_from]
        for block in self.ghostdag.prune(root):
            self.blocks.pop(block, None)
            self.tips.discard(block)
        self.pruned_final += keep_from
        del self.final[:keep_from]
