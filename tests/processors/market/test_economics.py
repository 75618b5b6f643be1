from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from processors.market.economics import (
    MS_PER_HOUR,
    refund,
    reputation_bonus_bps,
    reputation_bps,
    reward,
)


def test_the_reward_formula_by_hand() -> None:
    # 3.6e15 wei/h is 1e12 wei/ms; 7 ms at full performance and neutral reputation.
    owed = reward(3_600_000_000_000_000, 7, 10**16, 10_000, 5_000)
    assert (owed.paid_wei, owed.fee_wei, owed.refund_wei) == (
        6_300_000_000,
        700_000_000,
        10**16 - 7 * 10**9,
    )
    # A perfect reputation earns +20%, half performance halves the base.
    assert reward(MS_PER_HOUR, 1_000, 10**9, 10_000, 10_000).charged_wei == 1_200
    assert reward(MS_PER_HOUR, 1_000, 10**9, 5_000, 5_000).charged_wei == 500


@given(
    price=st.integers(0, 10**24),
    compute_ms=st.integers(0, 10**8),
    max_price=st.integers(0, 10**22),
    performance=st.integers(0, 10_000),
    reputation=st.integers(0, 10_000),
)
def test_money_is_conserved_and_capped(
    price: int, compute_ms: int, max_price: int, performance: int, reputation: int
) -> None:
    owed = reward(price, compute_ms, max_price, performance, reputation)
    assert owed.paid_wei + owed.fee_wei + owed.refund_wei == max_price
    assert min(owed.paid_wei, owed.fee_wei, owed.refund_wei) >= 0
    assert owed.fee_wei == owed.charged_wei * 1_000 // 10_000
    assert refund(max_price).refund_wei == max_price


@given(st.integers(0, 1_000), st.integers(0, 1_000))
def test_reputation_is_bounded_and_monotone(accepted: int, rejected: int) -> None:
    value = reputation_bps(accepted, rejected)
    assert 0 < value <= 10_000
    assert reputation_bps(accepted + 1, rejected) >= value >= reputation_bps(accepted, rejected + 1)
    assert 0 <= reputation_bonus_bps(value) <= 2_000


def test_new_nodes_are_neutral() -> None:
    assert reputation_bps(0, 0) == 5_000 and reputation_bonus_bps(5_000) == 0
