"""JSON-RPC parameter parsing (pure): a bad count or percentile list is a -32602 with the
reason, never an exception that becomes an HTTP 500."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.formats import BadParam
from gateway.jsonrpc import MAX_PERCENTILES, _count, _percentiles


def test_counts_are_hex_or_integers_and_never_negative() -> None:
    assert _count("0x10", "limit") == 16 and _count(7, "limit") == 7
    for bad in ([1], {"a": 1}, None, 1.5, True, "12", "0xzz"):
        with pytest.raises(BadParam, match="limit"):
            _count(bad, "limit")
    with pytest.raises(BadParam, match="must not be negative"):
        _count(-1, "limit")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (5, "a list"),
        ("25", "a list"),
        ([10, "x"], "not a number"),
        ([True], "not a number"),
        ([101], "not a number"),
        ([-1], "not a number"),
        ([50, 10], "ascending"),
        ([1] * (MAX_PERCENTILES + 1), "a list"),
    ],
)
def test_reward_percentiles_are_checked(value: Any, why: str) -> None:
    with pytest.raises(BadParam, match=why):
        _percentiles(value)


def test_good_reward_percentiles_pass() -> None:
    assert _percentiles(None) == [] and _percentiles([]) == []
    assert _percentiles([10, 50.5, 90]) == [10.0, 50.5, 90.0]
