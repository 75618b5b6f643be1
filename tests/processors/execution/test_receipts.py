"""The one receipt builder: its receipts are the `lattice.receipts` events but the cause."""

from __future__ import annotations

import dataclasses

from processors.execution.receipts import BlockReceipt
from schemas.events import Receipt


def test_a_block_receipt_has_the_events_fields_but_its_cause() -> None:
    ours = [(f.name, f.type) for f in dataclasses.fields(BlockReceipt)]
    theirs = [(f.name, f.type) for f in dataclasses.fields(Receipt) if f.name != "cause"]
    assert ours == theirs
