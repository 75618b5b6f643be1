"""Transaction intake: decode, admit, log, and remember what this gateway accepted.

Every transaction a user sends (`eth_sendRawTransaction`, `POST /v1/transactions`) comes
through `TransactionIntake.submit`:

1. **decode**: every stateless check (`processors.execution.transactions`): encoding, chain
   id, signature, size, intrinsic gas;
2. **admit**: the checks a node makes against the executed state before accepting (nonce
   too low, insufficient funds for gas * price + value) and a place among this gateway's
   pending transactions: a second transaction with a pending one's sender and nonce is
   refused unless it bumps both fee caps by 10% (the mempool's rule, geth's "replacement
   transaction underpriced"); otherwise the gateway would acknowledge a transaction every
   proposer is bound to drop. Before execution has written its genesis, only the stateless
   checks apply;
3. **send** to `lattice.tx.submitted`, keyed by sender, answering only once the broker
   acknowledged it;
4. **release** the place taken at admission if the log did not take the transaction.

Pending transactions are per sender and nonce: `eth_getTransactionCount(addr, "pending")`
counts them, and executed ones leave from the front as the state nonce passes them. They
are the network's, not this gateway's: `learn` takes every transaction on
`lattice.tx.submitted` in log order (`gateway.pendingview`, whichever gateway accepted it),
and the log's order decides, as it does for the proposers: the first transaction of a sender
and nonce on the log holds the place, a later one takes it only as a 10% bump. One this
gateway admitted is provisional until the log shows it: another that reached the log first
takes its place.
Executed transactions swept out are kept until the block that ran them is final (the last
`MAX_SWEPT` at most): an optimistic block can be reorganised away before the chain merges its
transactions back, and until then `find` still answers for one whose nonce the chain no
longer uses, and `pending_nonce` and `pool` count it, so a client sees its transaction
pending again (as geth puts a reorganised transaction back in its pool) rather than unknown,
and a wallet does not reuse its nonce. Once final, the chain ran it or never will (a
reordering may make it invalid: execution skips it), and it is none of these.
Accepted hashes are numbered from 0, so pending-transaction filters and subscriptions keep
an absolute cursor; the oldest are forgotten beyond `MAX_ACCEPTED`.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.chainview import LedgerNotReady
from gateway.ledger import LedgerQueries
from processors.abc import RecordSink
from processors.execution.transactions import (
    ChainRules,
    InvalidTransaction,
    Transaction,
    decode_transaction,
    submitted_event,
)
from processors.proposer.mempool import PRICE_BUMP_PERCENT, replaces
from streams.kafka import Delivered, DeliveryError
from streams.topics import hex_key, topic

TX_SUBMITTED = topic("tx.submitted")
#: How long a request waits for the broker before the log counts as unavailable.
DELIVERY_TIMEOUT_S = 15.0
#: Senders with pending transactions beyond which executed ones are swept out.
MAX_PENDING_SENDERS = 10_000
#: Accepted hashes kept for pending-transaction filters (slow pollers lose the oldest).
MAX_ACCEPTED = 20_000
#: Swept executed transactions kept at most, awaiting the finality of their blocks.
MAX_SWEPT = 4_096


@dataclass(frozen=True)
class _Swept:
    """A transaction swept out as executed, and the head's number then (its block's at most:
    once that is final, no reorganisation brings it back)."""

    tx: Transaction
    head: int


@dataclass(frozen=True)
class Pool:
    """Pending transactions by sender, in nonce order: `pending` can run next, `queued`
    wait for a missing nonce."""

    pending: dict[bytes, list[Transaction]]
    queued: dict[bytes, list[Transaction]]

    def runnable(self) -> list[Transaction]:
        return [tx for txs in self.pending.values() for tx in txs]


class Unavailable(RuntimeError):
    """The log did not accept a record in time."""


class TransactionIntake:
    def __init__(self, rules: ChainRules, sink: RecordSink, ledger: LedgerQueries | None) -> None:
        self.rules = rules
        self.sink = sink
        self.ledger = ledger
        #: Transactions this gateway accepted and execution has not yet reached, per sender
        #: and nonce: pending nonces, duplicates and replacements are judged against them.
        self.pending: dict[bytes, dict[int, Transaction]] = {}
        #: Admitted here, not yet seen on the log (`learn`).
        self._provisional: set[bytes] = set()
        #: `admit` runs on the event loop, `learn` on the pending view's thread.
        self._lock = threading.Lock()
        self._accepted: deque[bytes] = deque(maxlen=MAX_ACCEPTED)
        self._swept: OrderedDict[bytes, _Swept] = OrderedDict()
        #: The same, per sender and nonce (the one swept last at a nonce).
        self._swept_nonces: dict[bytes, dict[int, _Swept]] = {}
        self._accepted_count = 0

    async def submit(self, raw: bytes, source: str) -> tuple[Transaction, Delivered]:
        """Decode, check and log a transaction; raises InvalidTransaction or Unavailable."""
        tx = decode_transaction(raw, self.rules)
        admitted, replaced, account_nonce = False, None, None
        if self.ledger is not None:
            try:
                with self._lock:
                    replaced, account_nonce = self.admit(tx)
                    self._provisional.add(tx.hash)
                admitted = True
            except LedgerNotReady:
                pass
        event = submitted_event(tx, int(time.time() * 1000), source, account_nonce)
        try:
            future = self.sink.send(TX_SUBMITTED, event, key=hex_key(tx.sender))
            delivered = await asyncio.wait_for(asyncio.wrap_future(future), DELIVERY_TIMEOUT_S)
        except (DeliveryError, TimeoutError) as exc:
            if admitted:
                with self._lock:
                    self.release(tx, replaced)
            raise Unavailable(f"the log did not accept the transaction: {exc}") from exc
        with self._lock:
            self._note_accepted(tx.hash)
        return tx, delivered

    def _note_accepted(self, tx_hash: bytes) -> None:
        self._accepted.append(tx_hash)
        self._accepted_count += 1

    def learn(self, tx: Transaction) -> None:
        """A transaction on the log, in log order, whichever gateway accepted it."""
        with self._lock:
            if self.ledger is not None:
                try:
                    if tx.nonce < self.ledger.nonce(tx.sender):
                        return  # executed already
                except LedgerNotReady:
                    pass
            waiting = self.pending.setdefault(tx.sender, {})
            current = waiting.get(tx.nonce)
            if current is not None and current.hash == tx.hash:
                self._provisional.discard(tx.hash)  # this gateway's own, now on the log
                return
            if current is None or current.hash in self._provisional or replaces(tx, current):
                if current is not None:
                    self._provisional.discard(current.hash)
                waiting[tx.nonce] = tx
                self._note_accepted(tx.hash)
            if len(self.pending) > MAX_PENDING_SENDERS:
                self._forget_executed()

    def admit(self, tx: Transaction) -> tuple[Transaction | None, int]:
        """The stateful checks, then a place among the pending transactions. Returns the
        transaction it replaces, if any (give it to `release` should the log refuse `tx`),
        and the sender's state nonce it checked against (the mempool's start for it)."""
        assert self.ledger is not None
        nonce = self.ledger.nonce(tx.sender)
        if tx.nonce < nonce:
            raise InvalidTransaction(
                "nonce_too_low", f"nonce too low: next nonce {nonce}, tx nonce {tx.nonce}"
            )
        swept = self._swept.get(tx.hash)
        if swept is not None and self._may_return(swept):
            # Run in an optimistic block a reorganisation took out of the head: the block
            # is in the DAG, which merges it back, so the transaction is pending already.
            raise InvalidTransaction("already_known", "already known")
        cost = tx.gas_limit * tx.fee_cap + tx.value
        balance = self.ledger.balance(tx.sender)
        if balance < cost:
            raise InvalidTransaction(
                "insufficient_funds",
                f"insufficient funds for gas * price + value: balance {balance}, tx cost {cost}",
            )
        waiting = self.pending.setdefault(tx.sender, {})
        # Executed ones leave from the front (senders send in nonce order, so insertion order
        # is nonce order): O(1) per call even with thousands pending. One sent out of order
        # lingers harmlessly below the state nonce until the sweep.
        while waiting and (oldest := next(iter(waiting))) < nonce:
            self._sweep(waiting.pop(oldest))
        previous = waiting.get(tx.nonce)
        if previous is not None:
            if previous.hash == tx.hash:
                raise InvalidTransaction("already_known", "already known")
            if not replaces(tx, previous):
                raise InvalidTransaction(
                    "underpriced",
                    "replacement transaction underpriced: raise the fee cap and the tip by "
                    f"{PRICE_BUMP_PERCENT}% over the pending transaction 0x{previous.hash.hex()}",
                )
        waiting[tx.nonce] = tx
        if len(self.pending) > MAX_PENDING_SENDERS:
            self._forget_executed()
        return previous, nonce

    def release(self, tx: Transaction, previous: Transaction | None) -> None:
        """Undo `admit` for a transaction the log did not take."""
        self._provisional.discard(tx.hash)
        waiting = self.pending.get(tx.sender, {})
        if waiting.get(tx.nonce) is tx:
            if previous is None:
                del waiting[tx.nonce]
            else:
                waiting[tx.nonce] = previous

    def _forget_executed(self) -> None:
        assert self.ledger is not None
        for sender in list(self.pending):
            nonce = self.ledger.nonce(sender)
            for gone in (t for n, t in self.pending[sender].items() if n < nonce):
                self._provisional.discard(gone.hash)
                self._sweep(gone)
            waiting = {n: t for n, t in self.pending[sender].items() if n >= nonce}
            if waiting:
                self.pending[sender] = waiting
            else:
                del self.pending[sender]

    def _sweep(self, tx: Transaction) -> None:
        assert self.ledger is not None
        entry = _Swept(tx, self.ledger.head().block_number)
        self._swept[tx.hash] = entry
        self._swept.move_to_end(tx.hash)  # swept again after a second reorganisation
        self._swept_nonces.setdefault(tx.sender, {})[tx.nonce] = entry
        # The oldest go once final (sweeps come in head order) or beyond the bound, so
        # those kept are the few a reorganisation may still undo.
        final = self._final()
        while self._swept and (
            len(self._swept) > MAX_SWEPT or next(iter(self._swept.values())).head <= final
        ):
            _, old = self._swept.popitem(last=False)
            nonces = self._swept_nonces.get(old.tx.sender, {})
            if nonces.get(old.tx.nonce) is old:
                del nonces[old.tx.nonce]
                if not nonces:
                    del self._swept_nonces[old.tx.sender]

    def _final(self) -> int:
        """The last final block's number (a swept transaction whose head it reached is
        the final chain's, or never will be)."""
        assert self.ledger is not None
        try:
            return self.ledger.header("safe").block_number
        except LedgerNotReady:
            return 2**63

    def _may_return(self, entry: _Swept) -> bool:
        """Whether a reorganisation may still have undone a swept transaction: its block
        is not final yet."""
        return self._final() < entry.head

    def pending_nonce(self, sender: bytes, state_nonce: int) -> int:
        """The next nonce counting the network's pending transactions of `sender`, and
        those a reorganisation took out of the optimistic head (swept ones at or above the
        state nonce: none is swept before the state nonce passes it)."""
        with self._lock:
            waiting = self.pending.get(sender, {})
            swept = self._swept_nonces.get(sender, {})
            nonce = state_nonce
            while nonce in waiting or (nonce in swept and self._may_return(swept[nonce])):
                nonce += 1
        return nonce

    def pool(self, nonce_of: Callable[[bytes], int]) -> Pool:
        """The pending transactions split as geth's pool splits them: those the next
        blocks can take (a sender's unbroken run of nonces from its state nonce, given by
        `nonce_of`) and those queued behind a gap. Executed ones are left out; those a
        reorganisation took out of the optimistic head are back in."""
        ready: dict[bytes, list[Transaction]] = {}
        queued: dict[bytes, list[Transaction]] = {}
        with self._lock:
            waiting = {sender: dict(txs) for sender, txs in self.pending.items() if txs}
            final = self._final() if self._swept_nonces else 0
            swept = {
                sender: {n: e.tx for n, e in nonces.items() if e.head > final}
                for sender, nonces in self._swept_nonces.items()
            }
        for sender in swept.keys() | waiting.keys():
            nonce = nonce_of(sender)
            txs = {n: t for n, t in swept.get(sender, {}).items() if n >= nonce}
            txs.update(waiting.get(sender, {}))  # a pending one holds its nonce
            for n in sorted(txs):
                if n < nonce:
                    continue
                (ready if n == nonce else queued).setdefault(sender, []).append(txs[n])
                if n == nonce:
                    nonce += 1
        return Pool(ready, queued)

    def find(self, tx_hash: bytes) -> Transaction | None:
        """A pending transaction by hash, or one executed and swept out lately. Either may
        be executed by now: callers look in the ledger first, and count one as pending
        only while its nonce is not behind its sender's (a reorganised one is)."""
        with self._lock:
            for txs in self.pending.values():
                for tx in txs.values():
                    if tx.hash == tx_hash:
                        return tx
            entry = self._swept.get(tx_hash)
            return entry.tx if entry is not None and self._may_return(entry) else None

    @property
    def accepted_count(self) -> int:
        """How many transactions this gateway has accepted: the cursor of "from now on"."""
        return self._accepted_count

    def accepted_since(self, cursor: int) -> tuple[list[bytes], int]:
        """Hashes accepted from `cursor` on (those still kept), and the cursor after them."""
        with self._lock:
            first_kept = self._accepted_count - len(self._accepted)
            skip = max(0, cursor - first_kept)
            return list(itertools.islice(self._accepted, skip, None)), self._accepted_count
