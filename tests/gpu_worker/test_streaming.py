"""Streamed tokens gathered into events (pure)."""

from __future__ import annotations

import json

from gpu_worker.processor import STREAM_EVERY_S, TokenBatch
from processors.compute.generation import StreamedToken


def token(position: int, token: int, text: str, choice: int = 0) -> StreamedToken:
    return StreamedToken(choice, position, token, text)


def test_the_first_token_goes_at_once_and_the_rest_in_batches() -> None:
    batch = TokenBatch(b"\x01" * 32, b"\x02" * 20, attempt=0)
    step = STREAM_EVERY_S / 4
    events = batch.add(token(0, 10, "a"), now=0.0)
    assert [(e.index, e.token_ids, e.text) for e in events] == [(0, (10,), "a")]
    gathered = [
        batch.add(token(i, 10 + i, "" if i == 2 else "x"), now=i * step) for i in (1, 2, 3, 4)
    ]
    assert gathered[:3] == [[], [], []]  # within the interval: waiting for company
    (due,) = gathered[3]  # the interval passed: tokens 1..4 in one event
    assert (due.index, due.token_ids, due.text) == (1, (11, 12, 13, 14), "xxx")
    assert batch.add(token(5, 15, "y"), now=4 * step + STREAM_EVERY_S / 2) == []
    (last,) = batch.rest()  # the end of the generation sends what waits
    assert (last.index, last.token_ids, last.text) == (5, (15,), "y")
    assert batch.rest() == []


def test_an_event_holds_one_choice_and_its_logprobs() -> None:
    batch = TokenBatch(b"\x01" * 32, b"\x02" * 20, attempt=0)
    entry = {"id": 7, "token": "a", "logprob": -0.5, "top": []}
    batch.add(StreamedToken(0, 0, 7, "a", entry), now=0.0)
    assert batch.add(StreamedToken(0, 1, 7, "a", entry), now=0.001) == []
    # The next choice's first token sends the first choice's tokens, and itself, at once.
    first, second = batch.add(StreamedToken(1, 0, 8, "b", entry), now=0.002)
    assert (first.choice, first.index, first.token_ids) == (0, 1, (7,))
    assert json.loads(first.logprobs) == [entry]
    assert (second.choice, second.index, second.text) == (1, 0, "b")
    assert batch.rest() == []
    plain = TokenBatch(b"\x01" * 32, b"\x02" * 20, attempt=0)
    (event,) = plain.add(token(0, 3, "c"), now=0.0)
    assert event.logprobs == ""  # not asked for: none carried
