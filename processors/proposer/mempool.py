"""The proposer's mempool (pure core).

Transactions wait per sender, keyed by nonce. A sender's *pending* transactions are the
unbroken run of nonces from the sender's next nonce; later ones are *queued* behind the gap
until it fills. Blocks take pending transactions by effective priority fee, highest first,
always in nonce order within a sender (the price-and-nonce ordering of geth's miner); ties
go to the earlier arrival, so selection is a pure function of what arrived and in what order.

A sender's next nonce is learned from the blocks the proposer sees (one past the highest
nonce included) and from the state nonce the accepting gateway read (`add`'s
`account_nonce`), whichever is higher; with neither, the lowest nonce in the pool is taken
as the start. Without the gateway's word, a transaction sent ahead of a gap by a sender no
block had shown yet was proposed at once, rejected by execution, and the one that filled
the gap then dropped as stale. Execution, not the mempool, is the judge of nonces: a
transaction that turns out stale is skipped there and recorded as rejected.

A transaction with the same sender and nonce as a waiting one replaces it only if it raises
both the fee cap and the tip by at least `price_bump_percent` (10%, as geth).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from processors.execution.transactions import Transaction

PRICE_BUMP_PERCENT = 10


def replaces(new: Transaction, old: Transaction, bump_percent: int = PRICE_BUMP_PERCENT) -> bool:
    """Whether `new` may take the place of `old` (same sender and nonce): it must raise both
    the fee cap and the tip by `bump_percent`, so that replacing cannot be used to flood."""
    bump = 100 + bump_percent
    return new.fee_cap * 100 >= old.fee_cap * bump and new.tip_cap * 100 >= old.tip_cap * bump


@dataclass
class Mempool:
    max_size: int = 20_000
    price_bump_percent: int = PRICE_BUMP_PERCENT
    _by_sender: dict[bytes, dict[int, tuple[int, Transaction]]] = field(default_factory=dict)
    _next_nonce: dict[bytes, int] = field(default_factory=dict)
    _hashes: set[bytes] = field(default_factory=set)
    _arrivals: int = 0

    def __len__(self) -> int:
        return len(self._hashes)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._hashes

    def add(self, tx: Transaction, account_nonce: int | None = None) -> str:
        """Offer a transaction (`account_nonce`: its sender's state nonce as the accepting
        gateway read it): 'added', 'replaced', 'duplicate', 'stale', 'underpriced' or
        'full'."""
        if tx.hash in self._hashes:
            return "duplicate"
        if account_nonce is not None and account_nonce > self._next_nonce.get(tx.sender, -1):
            self._next_nonce[tx.sender] = account_nonce
        if tx.nonce < self._next_nonce.get(tx.sender, 0):
            return "stale"
        waiting = self._by_sender.setdefault(tx.sender, {})
        current = waiting.get(tx.nonce)
        if current is not None:
            old = current[1]
            if not replaces(tx, old, self.price_bump_percent):
                return "underpriced"
            self._hashes.discard(old.hash)
        elif len(self._hashes) >= self.max_size:
            return "full"
        self._arrivals += 1
        waiting[tx.nonce] = (self._arrivals, tx)
        self._hashes.add(tx.hash)
        return "replaced" if current is not None else "added"

    def waiting(self, sender: bytes, nonce: int) -> Transaction | None:
        """The transaction waiting with this sender and nonce, if any."""
        entry = self._by_sender.get(sender, {}).get(nonce)
        return entry[1] if entry is not None else None

    def _start(self, sender: bytes) -> int:
        waiting = self._by_sender[sender]
        return self._next_nonce.get(sender, min(waiting))

    def pending(self, sender: bytes) -> list[Transaction]:
        """The sender's executable run of nonces, in order."""
        waiting = self._by_sender.get(sender)
        if not waiting:
            return []
        run, nonce = [], self._start(sender)
        while nonce in waiting:
            run.append(waiting[nonce][1])
            nonce += 1
        return run

    def queued(self, sender: bytes) -> list[Transaction]:
        """The sender's transactions held back behind a nonce gap."""
        pending = {tx.nonce for tx in self.pending(sender)}
        waiting = self._by_sender.get(sender, {})
        return [waiting[n][1] for n in sorted(waiting) if n not in pending]

    def select(
        self,
        max_count: int,
        max_bytes: int,
        base_fee: int = 0,
        skip: Collection[bytes] = (),
    ) -> list[Transaction]:
        """Transactions for the next block, best effective tip first, nonce order kept;
        none from the senders in `skip`."""
        heap: list[tuple[int, int, int, bytes]] = []
        runs: dict[bytes, list[Transaction]] = {}
        for sender in self._by_sender:
            if sender in skip:
                continue
            run = self.pending(sender)
            if run:
                runs[sender] = run
                arrival = self._by_sender[sender][run[0].nonce][0]
                heapq.heappush(heap, (-run[0].effective_tip(base_fee), arrival, 0, sender))
        chosen: list[Transaction] = []
        size = 0
        while heap and len(chosen) < max_count:
            _, _, index, sender = heapq.heappop(heap)
            tx = runs[sender][index]
            if size + len(tx.raw) > max_bytes:
                continue  # this sender's later nonces cannot go before this one
            chosen.append(tx)
            size += len(tx.raw)
            if index + 1 < len(runs[sender]):
                following = runs[sender][index + 1]
                arrival = self._by_sender[sender][following.nonce][0]
                heapq.heappush(
                    heap, (-following.effective_tip(base_fee), arrival, index + 1, sender)
                )
        return chosen

    def mark_included(self, txs: Iterable[Transaction]) -> list[bytes]:
        """Forget included transactions and everything at or below their nonces; the hashes
        of the waiting transactions this dropped."""
        dropped: list[bytes] = []
        for tx in txs:
            nxt = max(self._next_nonce.get(tx.sender, 0), tx.nonce + 1)
            self._next_nonce[tx.sender] = nxt
            waiting = self._by_sender.get(tx.sender)
            if waiting is None:
                continue
            for nonce in [n for n in waiting if n < nxt]:
                gone = waiting.pop(nonce)[1].hash
                self._hashes.discard(gone)
                dropped.append(gone)
            if not waiting:
                del self._by_sender[tx.sender]
        return dropped
