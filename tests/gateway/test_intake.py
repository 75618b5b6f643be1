"""The network's pending transactions in a gateway's intake (pure: a stand-in ledger and
sink): the log's order decides a sender and nonce, as it does for the proposers; this
gateway's own admissions are provisional until the log shows them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gateway import intake as intake_module
from gateway.intake import Pool, TransactionIntake
from processors.execution.transactions import ChainRules, InvalidTransaction, decode_transaction
from streams.settings import CHAIN_ID
from tests.txs import ACCOUNT, signed


class Ledger:
    """What the intake asks of the ledger: the state nonce and balance, the head's number
    and the last final one's."""

    def __init__(self, nonce: int = 0) -> None:
        self.state_nonce = nonce
        self.head_number, self.final_number = 5, 3

    def nonce(self, sender: bytes) -> int:
        return self.state_nonce

    def head(self) -> Any:
        return SimpleNamespace(block_number=self.head_number)

    def header(self, ref: str) -> Any:
        assert ref == "safe"
        return SimpleNamespace(block_number=self.final_number)

    def balance(self, sender: bytes) -> int:
        return 10**24


def tx(nonce: int, tip_gwei: int = 1, fee_gwei: int = 2) -> Any:
    raw = signed(nonce=nonce, maxPriorityFeePerGas=tip_gwei * 10**9, maxFeePerGas=fee_gwei * 10**9)
    return decode_transaction(raw, ChainRules(CHAIN_ID))


def intake(ledger: Ledger | None = None) -> TransactionIntake:
    return TransactionIntake(ChainRules(CHAIN_ID), sink=None, ledger=ledger or Ledger())  # type: ignore[arg-type]


SENDER = bytes.fromhex(ACCOUNT.address[2:])


def test_transactions_learned_from_the_log_count_as_pending() -> None:
    pool = intake()
    for nonce in range(3):
        pool.learn(tx(nonce))
    assert pool.pending_nonce(SENDER, 0) == 3
    assert pool.accepted_since(0)[1] == 3
    with pytest.raises(InvalidTransaction, match="already known"):
        pool.admit(tx(1))
    with pytest.raises(InvalidTransaction, match="underpriced"):
        pool.admit(tx(1, tip_gwei=1, fee_gwei=3))  # the tip is not bumped by 10%


def test_the_first_on_the_log_holds_the_place_and_only_a_bump_takes_it() -> None:
    pool = intake()
    first, cheaper, bumped = tx(0), tx(0, 1, 3), tx(0, 2, 4)
    pool.learn(first)
    pool.learn(cheaper)  # on the log after it, not a bump: proposers drop it too
    assert pool.pending[SENDER][0] is first
    pool.learn(bumped)
    assert pool.pending[SENDER][0] is bumped


def test_an_admission_here_gives_way_to_another_that_reached_the_log_first() -> None:
    pool = intake()
    mine, theirs = tx(0, 1, 3), tx(0)
    pool.admit(mine)
    pool._provisional.add(mine.hash)  # as `submit` marks it once admitted
    pool.learn(theirs)  # another gateway's, first on the log
    assert pool.pending[SENDER][0] is theirs
    pool.learn(mine)  # then mine on the log: not a 10% bump over theirs
    assert pool.pending[SENDER][0] is theirs


def test_its_own_admission_seen_on_the_log_stays() -> None:
    pool = intake()
    mine = tx(0)
    pool.admit(mine)
    pool._provisional.add(mine.hash)
    pool.learn(mine)
    assert pool.pending[SENDER][0] is mine and not pool._provisional
    assert pool.accepted_since(0)[1] == 0  # counted once, when `submit` accepted it


def test_executed_transactions_are_not_learned() -> None:
    pool = intake(Ledger(nonce=5))
    pool.learn(tx(3))
    assert SENDER not in pool.pending


def test_a_swept_transaction_is_pending_again_until_its_block_is_final() -> None:
    ledger = Ledger()
    pool = intake(ledger)
    first, second = tx(0), tx(1)
    pool.admit(first)
    ledger.state_nonce = 1  # executed in optimistic block 5
    pool.admit(second)  # sweeps the first out of the pending ones
    assert 0 not in pool.pending[SENDER]
    assert pool.pending_nonce(SENDER, 1) == 2
    # Block 5 is reorganised away: eth_getTransactionByHash finds the first (and, with the
    # state nonce back at 0, shows it pending), and the pending nonce counts it, so a
    # wallet does not send another at its nonce.
    ledger.state_nonce = 0
    assert pool.find(first.hash) is first
    assert pool.find(tx(2).hash) is None
    assert pool.pending_nonce(SENDER, 0) == 2
    assert pool.pool(ledger.nonce).pending == {SENDER: [first, second]}  # txpool, pending block
    # Sent again meanwhile, it is "already known", as geth says of one in its pool: it is in
    # a block of the DAG, which the chain merges back.
    with pytest.raises(InvalidTransaction, match="already known"):
        pool.admit(first)
    assert 0 not in pool.pending[SENDER]  # refused, nothing changed
    # Final past block 5 and never run again (the new order made it invalid): it is gone,
    # and nonce 0 is free again.
    ledger.final_number = 5
    assert pool.find(first.hash) is None
    assert pool.pending_nonce(SENDER, 0) == 0
    assert pool.pool(ledger.nonce) == Pool({}, {SENDER: [second]})
    ledger.state_nonce, ledger.head_number = 2, 7
    pool.admit(tx(2))  # the next sweep lets the final ones go
    assert list(pool._swept) == [second.hash]


def test_swept_transactions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_module, "MAX_SWEPT", 2)
    ledger = Ledger()
    pool = intake(ledger)
    x, y = tx(0), tx(0, 2, 4)
    for swept in (x, y, x, tx(1), tx(2)):  # x swept, replaced by y, x again, then others
        ledger.state_nonce = swept.nonce
        pool.learn(swept)  # from the log: another gateway took x again
        ledger.state_nonce = swept.nonce + 1
        pool._forget_executed()
    assert len(pool._swept) == 2 and pool.find(x.hash) is None
    assert sum(len(n) for n in pool._swept_nonces.values()) == 2
