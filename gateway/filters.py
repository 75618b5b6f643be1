"""Log criteria, filters (`eth_newFilter` and the rest) and subscriptions' cursors.

A filter and a WebSocket subscription are the same thing polled two ways: a kind (new
blocks, logs, pending transactions), criteria for logs, and a cursor, the next block
number (or accepted-transaction count) to report from, with the hash of the block before
it. `changes` advances a cursor and returns what is new as typed values; JSON-RPC and
WebSocket format them. When a reorganisation of the optimistic head replaced blocks a
watch reported, the cursor goes back to the fork: a log watch reports the dropped blocks'
logs as removed (geth's `removed: true`), then the new chain's; a block watch reports
the new chain's blocks. Filters nobody polled for `FILTER_TIMEOUT_S` are dropped, as
geth does.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from eth.abc import BlockAPI
from eth.exceptions import HeaderNotFound

from gateway.chainview import ChainView
from gateway.formats import BadParam, parse_data, parse_qty
from gateway.intake import TransactionIntake
from gateway.ledger import TAGS, BlockRef, FoundLog, LedgerQueries, LogCriteria, QueryError

FILTER_TIMEOUT_S = 300
Kind = Literal["blocks", "logs", "pending"]


def block_ref(value: Any, what: str = "block") -> BlockRef:
    """A block reference from a JSON-RPC parameter: a tag, a 0x-number, a block hash, or
    an object with `blockHash` or `blockNumber` (EIP-1898); absent is `latest`."""
    if value is None:
        return "latest"
    if isinstance(value, str) and value in TAGS:
        return value
    if isinstance(value, str) and len(value) == 66:  # a hash, as geth reads one
        return parse_data(value, what, 32)
    if isinstance(value, dict):
        if "blockHash" in value:
            return parse_data(value["blockHash"], "blockHash", 32)
        return block_ref(value.get("blockNumber"), what)
    return parse_qty(value, what)


def criteria_of(spec: Any) -> LogCriteria:
    """A filter object (`eth_getLogs`, `eth_newFilter`, a `logs` subscription), checked."""
    if not isinstance(spec, dict):
        raise BadParam("the filter must be an object")
    raw_addresses = spec.get("address") or []
    if isinstance(raw_addresses, str):
        raw_addresses = [raw_addresses]
    topics: list[tuple[bytes, ...] | None] = []
    for position in spec.get("topics") or []:
        if position is None:
            topics.append(None)
        elif isinstance(position, str):
            topics.append((parse_data(position, "topic", 32),))
        elif isinstance(position, list):
            topics.append(tuple(parse_data(t, "topic", 32) for t in position) or None)
        else:
            raise BadParam("each topic must be null, a topic or a list of topics")
    block_hash = spec.get("blockHash")
    return LogCriteria(
        addresses=tuple(parse_data(a, "address", 20) for a in raw_addresses),
        topics=tuple(topics),
        block_hash=parse_data(block_hash, "blockHash", 32) if block_hash else None,
        from_block=block_ref(spec.get("fromBlock", "latest"), "fromBlock"),
        to_block=block_ref(spec.get("toBlock", "latest"), "toBlock"),
    )


@dataclass
class Watch:
    """What a filter or subscription has reported up to (`cursor`) and for what."""

    kind: Kind
    criteria: LogCriteria | None
    cursor: int
    touched: float = field(default_factory=time.monotonic)
    #: The hash of block `cursor - 1` when the cursor moved there (None: not known yet).
    last: bytes | None = None
    #: The first block the watch reports (nothing below it was reported, so nothing
    #: below it is reported removed); None: its first cursor.
    start: int | None = None

    def __post_init__(self) -> None:
        if self.start is None:
            self.start = self.cursor


@dataclass(frozen=True)
class Changes:
    """What is new for a watch: block numbers, found logs or accepted hashes."""

    blocks: tuple[int, ...] = ()
    logs: tuple[FoundLog, ...] = ()
    pending: tuple[bytes, ...] = ()
    #: Logs reported before, of blocks a reorganisation dropped.
    removed: tuple[FoundLog, ...] = ()


class Watcher:
    """New watches at "now", and what each has not reported yet."""

    def __init__(self, ledger: LedgerQueries, intake: TransactionIntake) -> None:
        self.ledger = ledger
        self.intake = intake

    def watch(
        self, kind: Kind, criteria: LogCriteria | None = None, from_now: bool = False
    ) -> Watch:
        """A watch from "now"; a log filter (not `from_now`) starts at its `fromBlock`."""
        if kind == "pending":
            return Watch(kind, None, self.intake.accepted_count)
        if kind == "logs" and criteria is not None and not from_now:
            cursor = int(self.ledger.header(criteria.from_block).block_number)
        else:
            cursor = self.ledger.head().block_number + 1
        return Watch(kind, criteria, cursor, last=_canonical(self.ledger.view, cursor - 1))

    def changes(self, watch: Watch, limited: bool = True) -> Changes:
        """What is new since the watch's cursor (which moves past it); the log query
        limits apply when `limited` (`LedgerQueries.logs`)."""
        watch.touched = time.monotonic()
        if watch.kind == "pending":
            hashes, watch.cursor = self.intake.accepted_since(watch.cursor)
            return Changes(pending=tuple(hashes))
        before = (watch.cursor, watch.last)
        try:
            return self._changes(watch, limited)
        except QueryError:
            watch.cursor, watch.last = before  # over a limit: nothing counts as reported
            raise

    def _changes(self, watch: Watch, limited: bool) -> Changes:
        dropped = self._dropped(watch)
        top = self.ledger.head()
        head = top.block_number
        first, watch.cursor = watch.cursor, max(watch.cursor, head + 1)
        # The hash of what is reported up to: the head read here, not a later one.
        last = watch.cursor - 1
        watch.last = top.hash if last == head else _canonical(self.ledger.view, last)
        if watch.kind == "blocks":
            return Changes(blocks=tuple(range(first, head + 1)))
        assert watch.criteria is not None
        removed = tuple(
            (receipt, i)
            for block in dropped
            for receipt in self.ledger.receipts(block)
            for i, entry in enumerate(receipt.logs)
            if watch.criteria.matches(entry)
        )
        last = min(head, self.ledger.header(watch.criteria.to_block).block_number)
        if first > last:
            return Changes(removed=removed)
        found = self.ledger.logs(watch.criteria, first, last, limited=limited)
        return Changes(logs=tuple(found), removed=removed)

    def _dropped(self, watch: Watch) -> list[BlockAPI]:
        """The blocks a watch reported that are no longer canonical, oldest first; the
        cursor goes back to the first of them."""
        dropped: list[BlockAPI] = []
        reported, number = watch.last, watch.cursor - 1
        view = self.ledger.view
        floor = max(1, watch.start or 0)  # below its start a watch reported nothing
        while reported is not None and number >= floor and _canonical(view, number) != reported:
            block = self.ledger.block_by_hash(reported)
            dropped.append(block)
            reported, number = block.header.parent_hash, number - 1
        if dropped:
            watch.cursor = number + 1
        return dropped[::-1]


def _canonical(view: ChainView, number: int) -> bytes | None:
    if number < 0:
        return None
    try:
        return view.canonical_hash(number)
    except HeaderNotFound:  # above the head: the head went back
        return None


class Filters:
    """The installed filters of a gateway, by id."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self._filters: dict[str, Watch] = {}
        self._ids = itertools.count(1)

    def install(self, kind: Kind, criteria: LogCriteria | None = None) -> str:
        now = time.monotonic()
        for ident in [i for i, f in self._filters.items() if now - f.touched > FILTER_TIMEOUT_S]:
            del self._filters[ident]
        ident = hex(next(self._ids))
        self._filters[ident] = self.watcher.watch(kind, criteria)
        return ident

    def get(self, ident: Any) -> Watch | None:
        found = self._filters.get(ident) if isinstance(ident, str) else None
        if found is not None:
            found.touched = time.monotonic()
        return found

    def uninstall(self, ident: Any) -> bool:
        return isinstance(ident, str) and self._filters.pop(ident, None) is not None
