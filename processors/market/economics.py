"""Prices, rewards and reputation in integer arithmetic (pure core).

Reward (the seed's formula): the base price is the node's price per hour times the compute
time, capped at the job's maximum price; the gross charge is base x performance x
reputation bonus; the network keeps 10% of it and the provider gets the rest; whatever the
requester's maximum price leaves over is refunded. Every factor is in basis points and
every division rounds down, so all replicas compute the same wei.

Reputation is a function of a node's verdict counts only (not of their order), so replaying
verdicts in any interleaving of partitions gives the same figure:
`(accepted + 1) * 10000 // (accepted + 4 * rejected + 2)`: a new node starts at 5000 bps, each
accepted result moves it toward 10000, and one rejection weighs as much as four acceptances.
"""

from __future__ import annotations

from dataclasses import dataclass

BPS = 10_000
FEE_BPS = 1_000  # network fee: 10%
MS_PER_HOUR = 3_600_000
MAX_BONUS_BPS = 2_000  # a perfect reputation earns at most +20%


@dataclass(frozen=True)
class Reward:
    paid_wei: int  # to the provider
    fee_wei: int  # to the network
    refund_wei: int  # left in the requester's deposit

    @property
    def charged_wei(self) -> int:
        return self.paid_wei + self.fee_wei


def reputation_bps(accepted: int, rejected: int) -> int:
    return (accepted + 1) * BPS // (accepted + 4 * rejected + 2)


def reputation_bonus_bps(reputation: int) -> int:
    """0 at or below a neutral 5000 bps, rising linearly to MAX_BONUS_BPS at 10000."""
    return max(0, reputation - 5_000) * MAX_BONUS_BPS // 5_000


def base_price_wei(price_wei_per_hour: int, compute_ms: int, max_price_wei: int) -> int:
    return min(price_wei_per_hour * max(compute_ms, 1) // MS_PER_HOUR, max_price_wei)


def reward(
    price_wei_per_hour: int,
    compute_ms: int,
    max_price_wei: int,
    performance_bps: int,
    reputation: int,
) -> Reward:
    base = base_price_wei(price_wei_per_hour, compute_ms, max_price_wei)
    gross = base * performance_bps // BPS * (BPS + reputation_bonus_bps(reputation)) // BPS
    gross = min(gross, max_price_wei)
    fee = gross * FEE_BPS // BPS
    return Reward(paid_wei=gross - fee, fee_wei=fee, refund_wei=max_price_wei - gross)


def refund(max_price_wei: int) -> Reward:
    return Reward(paid_wei=0, fee_wei=0, refund_wei=max_price_wei)
