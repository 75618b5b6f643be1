"""Per-client request limits: a token bucket for the rate, a counter for requests in flight.

Pure: the clock is passed in, nothing here knows HTTP (`gateway.guard` applies these to
requests). A client is an API key when the request carries one, else its address. Keys are
not checked here (that costs a ledger read, the thing being protected), so a client that
invents keys gets a fresh bucket for each; what it gets for them is 401s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cachetools import LRUCache

#: Clients whose buckets are remembered; the least recently seen beyond it start afresh
#: (a full bucket), which bounds memory whatever keys or addresses arrive.
MAX_CLIENTS = 100_000


@dataclass(frozen=True)
class RequestLimits:
    """What one client may do: `rate` requests a second with `burst` above it, and
    `concurrent` requests at once (0: no such limit)."""

    rate: float = 0.0
    burst: int = 1
    concurrent: int = 0


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused, and after how many whole seconds to try again."""

    reason: Literal["rate", "concurrency"]
    retry_after_s: int
    message: str


def bearer(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer KEY` header (None without one)."""
    if authorization[:7].lower() != "bearer ":
        return None
    return authorization[7:].strip() or None


def client_of(authorization: str, address: str | None) -> str:
    """Whom a request counts against: its API key, else its address."""
    key = bearer(authorization)
    return f"key {key}" if key is not None else f"address {address or 'unknown'}"


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class Slots:
    """Things held at once per client (requests in flight, open sockets), at most `limit`
    each (0: any number). Only clients holding some are remembered."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def take(self, client: str) -> bool:
        held = self._held.get(client, 0)
        if self.limit and held >= self.limit:
            return False
        self._held[client] = held + 1
        return True

    def give(self, client: str) -> None:
        held = self._held.get(client, 0) - 1
        if held > 0:
            self._held[client] = held
        else:
            self._held.pop(client, None)

    def held(self, client: str) -> int:
        return self._held.get(client, 0)


class Limiter:
    """Admits a client's request (`admit`, then `release` once answered) or says why not.

    A refused request costs nothing: a client over its concurrency keeps its tokens, and
    one over its rate takes no slot.
    """

    def __init__(
        self,
        limits: RequestLimits,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.slots = Slots(limits.concurrent)
        self._buckets: LRUCache[str, _Bucket] = LRUCache(max_clients)

    def admit(self, client: str) -> Refusal | None:
        if self.limits.concurrent and self.slots.held(client) >= self.limits.concurrent:
            return Refusal(
                "concurrency",
                1,  # no clock says when one ends: a second is the shortest useful wait
                f"more than {self.limits.concurrent} requests in flight; wait for one to finish",
            )
        wait = self._take_token(client)
        if wait > 0:
            return Refusal(
                "rate",
                math.ceil(wait),
                f"rate limit of {self.limits.rate:g} requests/s "
                f"(burst {self.limits.burst}) reached",
            )
        self.slots.take(client)
        return None

    def release(self, client: str) -> None:
        self.slots.give(client)

    def _take_token(self, client: str) -> float:
        """Take one token of the client's bucket: 0, or the seconds until one is there."""
        rate = self.limits.rate
        if rate <= 0:
            return 0.0
        burst = max(1, self.limits.burst)
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate
