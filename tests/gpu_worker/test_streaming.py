"""Streamed tokens gathered into events (pure)."""

from __future__ import annotations

from gpu_worker.processor import STREAM_EVERY_S, TokenBatch


def test_the_first_token_goes_at_once_and_the_rest_in_batches() -> None:
    batch = TokenBatch(b"\x01" * 32, b"\x02" * 20, attempt=0)
    step = STREAM_EVERY_S / 4
    events = batch.add(0, 10, "a", now=0.0)
    assert [(e.index, e.token_ids, e.text) for e in events] == [(0, (10,), "a")]
    gathered = [batch.add(i, 10 + i, "" if i == 2 else "x", now=i * step) for i in range(1, 5)]
    assert gathered[:3] == [[], [], []]  # within the interval: waiting for company
    (due,) = gathered[3]  # the interval passed: tokens 1..4 in one event
    assert (due.index, due.token_ids, due.text) == (1, (11, 12, 13, 14), "xxx")
    assert batch.add(5, 15, "y", now=4 * step + STREAM_EVERY_S / 2) == []
    (last,) = batch.rest()  # the end of the generation sends what waits
    assert (last.index, last.token_ids, last.text) == (5, (15,), "y")
    assert batch.rest() == []
