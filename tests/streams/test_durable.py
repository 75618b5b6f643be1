"""Durable watermarks: what the archiver publishes and what gates wait on."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest

from streams.durable import BrokerRestarted, Gate, Watermarks, slots
from streams.topics import TOPICS

TX = TOPICS[0].name


def test_a_record_is_durable_once_the_watermark_passes_it(tmp_path: Path) -> None:
    marks = Watermarks.publish(tmp_path / "durable", {(TX, 1): 3})
    gate = Gate(tmp_path / "durable")
    assert gate.durable(TX, 1, 2)
    assert not gate.durable(TX, 1, 3)
    assert not gate.durable(TX, 0, 0)
    marks.advance(TX, 1, 4)
    assert gate.durable(TX, 1, 3)
    # A topic the archive does not hold is not gated.
    assert gate.durable("__consumer_offsets", 0, 10**9)


def test_every_catalogue_partition_has_a_slot() -> None:
    keys = slots()
    assert len(keys) == sum(spec.partitions for spec in TOPICS)
    assert sorted(keys.values()) == list(range(len(keys)))


def test_waits_resolve_when_the_archive_catches_up(tmp_path: Path) -> None:
    marks = Watermarks.publish(tmp_path / "durable", {})
    gate = Gate(tmp_path / "durable")
    futures: list[Future[int]] = [Future() for _ in range(3)]
    for offset, future in enumerate(futures):
        gate.resolve(TX, 0, offset, future, offset)
    time.sleep(0.05)
    assert not any(f.done() for f in futures)
    marks.advance(TX, 0, 2)
    assert [futures[0].result(1), futures[1].result(1)] == [0, 1]
    time.sleep(0.05)
    assert not futures[2].done()
    marks.advance(TX, 0, 3)
    assert futures[2].result(1) == 2


def test_a_broker_restart_fails_what_was_not_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "durable"
    Watermarks.publish(path, {(TX, 0): 5})
    gate = Gate(path)
    waiting: Future[str] = Future()
    gate.resolve(TX, 0, 7, waiting, "seven")
    # The broker dies with offsets 5 and 6 acknowledged in memory only; the new one is
    # re-seeded with the five on disk, and a later record at offset 7 is somebody else's.
    Watermarks.publish(path, {(TX, 0): 5}).advance(TX, 0, 8)
    with pytest.raises(BrokerRestarted):
        waiting.result(1)
    assert gate.restarted()
    with pytest.raises(BrokerRestarted):
        gate.durable(TX, 0, 1)
    # A process started after the restart is in the new generation.
    assert Gate(path).durable(TX, 0, 7)


def test_a_blocking_wait_returns_once_durable_and_times_out_when_stalled(
    tmp_path: Path,
) -> None:
    marks = Watermarks.publish(tmp_path / "durable", {})
    gate = Gate(tmp_path / "durable")
    threading.Timer(0.05, marks.advance, (TX, 2, 1)).start()
    gate.wait(TX, 2, 0, timeout=5)
    with pytest.raises(TimeoutError, match="not on disk"):
        gate.wait(TX, 2, 1, timeout=0.05)


def test_a_file_of_another_catalogue_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "durable"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a watermark file"):
        Gate(path)


def test_a_process_that_restarted_its_broker_gets_a_gate_of_the_new_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.durable import ENV

    path = tmp_path / "durable"
    Watermarks.publish(path, {(TX, 0): 1})
    monkeypatch.setenv(ENV, str(path))
    before = Gate.from_env()
    assert before is not None and Gate.from_env() is before
    Watermarks.publish(path, {(TX, 0): 1})
    after = Gate.from_env()
    assert after is not None and after is not before and not after.restarted()
    assert after.durable(TX, 0, 0)
