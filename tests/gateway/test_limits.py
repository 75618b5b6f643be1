"""The per-client limits (pure): a token bucket with a clock the test moves, and requests
in flight."""

from __future__ import annotations

from gateway.limits import Limiter, RequestLimits, Slots, bearer, client_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate_and_the_wait_in_whole_seconds() -> None:
    clock = Clock()
    limiter = Limiter(RequestLimits(rate=0.4, burst=3), clock)
    for _ in range(3):
        assert limiter.admit("a") is None
        limiter.release("a")
    refused = limiter.admit("a")
    assert refused is not None and refused.reason == "rate"
    assert refused.retry_after_s == 3  # a token every 2.5 s, rounded up
    assert "0.4 requests/s" in refused.message and "burst 3" in refused.message
    clock.now += 2.0
    again = limiter.admit("a")  # 0.8 of a token
    assert again is not None and again.retry_after_s == 1
    clock.now += 1.0
    assert limiter.admit("a") is None
    clock.now += 3600  # an idle hour refills no more than the burst
    admitted = 0
    while limiter.admit("a") is None:
        limiter.release("a")
        admitted += 1
    assert admitted == 3


def test_clients_have_their_own_buckets() -> None:
    limiter = Limiter(RequestLimits(rate=1, burst=1), Clock())
    assert limiter.admit("a") is None
    assert limiter.admit("a") is not None
    assert limiter.admit("b") is None


def test_requests_in_flight_are_capped_and_a_refusal_costs_no_token() -> None:
    clock = Clock()
    limiter = Limiter(RequestLimits(rate=1, burst=3, concurrent=2), clock)
    assert limiter.admit("a") is None and limiter.admit("a") is None
    refused = limiter.admit("a")
    assert refused is not None and refused.reason == "concurrency"
    assert refused.retry_after_s == 1 and "more than 2 requests in flight" in refused.message
    limiter.release("a")
    assert limiter.admit("a") is None  # the third token, kept through the refusal
    limiter.release("a")
    rated = limiter.admit("a")
    assert rated is not None and rated.reason == "rate"
    assert limiter.slots.held("a") == 1  # a request over the rate takes no slot


def test_zero_means_no_limit() -> None:
    limiter = Limiter(RequestLimits(), Clock())
    assert all(limiter.admit("a") is None for _ in range(10_000))


def test_memory_is_bounded_whatever_clients_arrive() -> None:
    limiter = Limiter(RequestLimits(rate=1, burst=1), Clock(), max_clients=2)
    for client in ("a", "b", "c"):
        assert limiter.admit(client) is None
        limiter.release(client)
    assert len(limiter._buckets) == 2 and not limiter.slots._held
    assert limiter.admit("a") is None  # forgotten: a full bucket again


def test_slots() -> None:
    slots = Slots(2)
    assert slots.take("x") and slots.take("x") and not slots.take("x")
    assert slots.take("y")
    slots.give("x")
    assert slots.take("x")
    assert all(Slots(0).take("x") for _ in range(100))


def test_a_request_counts_against_its_key_else_its_address() -> None:
    assert bearer("Bearer lk_abc") == "lk_abc" and bearer("bearer  lk_abc ") == "lk_abc"
    assert bearer("") is None and bearer("Basic xyz") is None and bearer("Bearer ") is None
    assert client_of("Bearer lk_abc", "10.0.0.1") == "key lk_abc"
    assert client_of("", "10.0.0.1") == "address 10.0.0.1"
    assert client_of("", None) == "address unknown"
