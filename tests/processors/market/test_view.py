"""The market view's fold of nodes' stakes from JobMarket's events in the receipts."""

from __future__ import annotations

import itertools

from eth_abi.abi import encode

from processors.execution.genesis import JOB_MARKET
from processors.market import chain
from processors.market.view import MarketView
from schemas.events import Log, Receipt
from tests import market_events

KEY = b"\x07" * 32
CHAIN_ID = 27182


def receipt(block: int, topics: list[bytes], words: list[int]) -> Receipt:
    log = Log(
        log_index=0,
        address=JOB_MARKET,
        topics=tuple(topics),
        data=encode(["uint256"] * len(words), words),
    )
    return market_events.receipt(block, [log])


def word(address: bytes) -> bytes:
    return address.rjust(32, b"\0")


def test_stakes_come_from_the_ledger_in_any_order_of_arrival() -> None:
    from processors.execution.genesis import address_of

    node = address_of(KEY)
    events = [
        receipt(3, [chain.NODE_REGISTERED, word(node)], [2 * 10**18, 5]),
        receipt(
            4, [chain.SETTLED, b"\x01" * 32, word(b"\x02" * 20), word(node)], [0, 0, 0, 10**17]
        ),
        receipt(6, [chain.NODE_REGISTERED, word(node)], [3 * 10**18, 5]),  # topped up to 3
        receipt(
            7, [chain.SETTLED, b"\x03" * 32, word(b"\x02" * 20), word(node)], [0, 0, 0, 10**18]
        ),
        receipt(8, [chain.UNSTAKE_REQUESTED, word(node)], [2 * 10**18, 99]),
        receipt(
            9, [chain.SETTLED, b"\x04" * 32, word(b"\x02" * 20), word(node)], [0, 0, 0, 10**17]
        ),
    ]
    for order in itertools.permutations(events):
        view = MarketView(CHAIN_ID)
        view.apply(market_events.registration(KEY))
        for event in order:
            view.apply(event)
        (seen,) = view.node_views()
        # The figure at block 8 (2 ETH) less the slash after it; the earlier ones are in it.
        assert (seen.stake_wei, seen.leaving) == (19 * 10**17, True)
    view.apply(receipt(10, [chain.STAKE_WITHDRAWN, word(node)], [1]))
    assert [(v.stake_wei, v.leaving) for v in view.node_views()] == [(0, False)]


def test_a_node_never_staked_has_no_stake_whatever_it_claims() -> None:

    view = MarketView(CHAIN_ID)
    view.apply(market_events.registration(KEY))
    other = receipt(3, [chain.NODE_REGISTERED, word(b"\x09" * 20)], [2 * 10**18, 5])
    view.apply(other)
    assert [v.stake_wei for v in view.node_views()] == [0]


def test_a_heartbeat_before_its_registration_still_counts() -> None:
    view = MarketView(CHAIN_ID)
    view.apply(market_events.heartbeat(KEY, timestamp_ms=1_234))
    view.apply(market_events.registration(KEY))
    (seen,) = view.node_views()
    assert seen.last_seen_ms == 1_234
    view.apply(market_events.heartbeat(KEY, timestamp_ms=999, sequence=1))  # an older one
    assert view.node_views()[0].last_seen_ms == 1_234
