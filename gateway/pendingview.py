"""The network's pending transactions, as the log has them: a follower (`gateway.follow`)
of `lattice.tx.submitted` that hands each transaction, whichever gateway accepted it, to
this gateway's intake (`TransactionIntake.learn`), so that pending nonces, `txpool` views
and the replacement rule agree wherever a client sends.

It reads the topic from the beginning at start (a record's sender and nonce are on the
event, so transactions already executed are passed over without decoding them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from gateway.chainview import LedgerNotReady
from gateway.follow import Follower
from gateway.intake import TX_SUBMITTED, TransactionIntake
from processors.abc import Output, Processor, Subscription
from processors.execution.transactions import InvalidTransaction, decode_transaction
from processors.state import MemoryStore
from schemas.events import TransactionSubmitted
from streams.kafka import Record

log = logging.getLogger(__name__)


class PendingView(Processor[MemoryStore]):
    role = "gateway"
    dead_letters = False
    name = "lattice-gateway-pending-view"

    def __init__(self, bootstrap: str, intake: TransactionIntake) -> None:
        self.intake = intake
        self._follower = Follower(self, bootstrap)

    @property
    def live(self) -> bool:
        return self._follower.live

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(TX_SUBMITTED),)

    def handle(self, record: Record[Any], state: MemoryStore) -> Sequence[Output]:
        event = record.event
        if not isinstance(event, TransactionSubmitted):
            return ()
        ledger = self.intake.ledger
        try:
            if ledger is not None and event.nonce < ledger.nonce(event.sender):
                return ()
        except LedgerNotReady:
            pass
        try:
            tx = decode_transaction(event.raw, self.intake.rules)
        except InvalidTransaction as exc:  # the gateway that took it checked it; not ours
            log.debug("a submitted transaction that does not decode: %s", exc)
            return ()
        self.intake.learn(tx)
        return ()

    def close(self) -> None:
        self._follower.close()
