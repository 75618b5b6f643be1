from __future__ import annotations

from processors.execution.transactions import ChainRules, Transaction, decode_transaction
from processors.proposer.mempool import Mempool
from streams.settings import CHAIN_ID
from tests.txs import signed

RULES = ChainRules(CHAIN_ID)
ALICE = "0x" + "a1" * 32
BOB = "0x" + "b2" * 32


def tx(key: str, nonce: int, tip: int = 10**9, cap: int = 3 * 10**9) -> Transaction:
    raw = signed(2, key=key, nonce=nonce, maxPriorityFeePerGas=tip, maxFeePerGas=cap)
    return decode_transaction(raw, RULES)


def test_gaps_are_held_back_until_filled() -> None:
    pool = Mempool()
    for n in (0, 1, 3):
        assert pool.add(tx(ALICE, n)) == "added"
    sender = tx(ALICE, 0).sender
    assert [t.nonce for t in pool.pending(sender)] == [0, 1]
    assert [t.nonce for t in pool.queued(sender)] == [3]
    assert [t.nonce for t in pool.select(10, 10**6)] == [0, 1]
    pool.add(tx(ALICE, 2))
    assert [t.nonce for t in pool.select(10, 10**6)] == [0, 1, 2, 3]


def test_selection_is_by_fee_but_keeps_each_senders_nonce_order() -> None:
    pool = Mempool()
    pool.add(tx(ALICE, 0, tip=1 * 10**9))
    pool.add(tx(ALICE, 1, tip=9 * 10**8 * 3))  # rich follow-up behind a cheap nonce 0
    pool.add(tx(BOB, 0, tip=2 * 10**9))
    chosen = pool.select(10, 10**6)
    assert [(t.sender == tx(BOB, 0).sender, t.nonce) for t in chosen] == [
        (True, 0),
        (False, 0),
        (False, 1),
    ]
    assert len(pool.select(2, 10**6)) == 2


def test_replacement_needs_a_ten_percent_bump() -> None:
    pool = Mempool()
    assert pool.add(tx(ALICE, 0, tip=10**9, cap=3 * 10**9)) == "added"
    assert pool.add(tx(ALICE, 0, tip=10**9 + 1, cap=3 * 10**9 + 1)) == "underpriced"
    better = tx(ALICE, 0, tip=11 * 10**8, cap=33 * 10**8)
    assert pool.add(better) == "replaced"
    assert pool.select(10, 10**6) == [better]
    assert len(pool) == 1
    assert pool.add(better) == "duplicate"


def test_included_transactions_leave_and_stale_ones_are_refused() -> None:
    pool = Mempool()
    pool.add(tx(ALICE, 0))
    pool.add(tx(ALICE, 1))
    pool.mark_included([tx(ALICE, 0)])
    assert [t.nonce for t in pool.select(10, 10**6)] == [1]
    assert pool.add(tx(ALICE, 0, tip=5 * 10**9, cap=6 * 10**9)) == "stale"


def test_size_limits() -> None:
    pool = Mempool(max_size=1)
    pool.add(tx(ALICE, 0))
    assert pool.add(tx(BOB, 0)) == "full"
    assert pool.select(10, 10) == []  # nothing fits in 10 bytes


def test_a_transaction_ahead_of_a_gap_waits_when_the_gateway_read_the_state_nonce() -> None:
    """A sender no block has shown yet sends nonce 1 before nonce 0: with the state nonce
    the gateway read (0), nonce 1 is queued, not proposed (execution would refuse it, and
    nonce 0 would then be dropped as stale); the gap filled, both go in order."""
    pool = Mempool()
    sender = tx(ALICE, 0).sender
    assert pool.add(tx(ALICE, 1), account_nonce=0) == "added"
    assert pool.pending(sender) == [] and [t.nonce for t in pool.queued(sender)] == [1]
    assert pool.select(10, 10**6) == []
    assert pool.add(tx(ALICE, 0), account_nonce=0) == "added"
    assert [t.nonce for t in pool.select(10, 10**6)] == [0, 1]
    assert pool.add(tx(BOB, 0), account_nonce=3) == "stale"  # below the state's nonce
