"""Hot standbys: what a member knows of the log (pure), and two real DAG processes under
one name, the active one SIGKILLed mid-stream: the other takes over and goes on with what
comes after, and the ordered topic has every block once, byte-identical to an independent
replica's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from processors.dag.processor import ORDERED, PROPOSED, VIRTUAL, DagProcessor, virtual_topic
from processors.standby import OnLog
from processors.state import RocksStore
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from tests.processors.dag.sim import simulate
from tests.processors.dag.test_processor import CONFIG, output_topic, publish
from tests.processors.harness import read_all, run_to_end


def test_the_highest_input_seen_on_a_partition_covers_the_lower_ones() -> None:
    seen = OnLog()
    out_a, out_b = ("out", 0), ("out", 1)
    assert not seen.holds(("in", 0, 5, 0), out_a)
    seen.saw(("in", 0, 5, 0), out_a)
    assert seen.holds(("in", 0, 3, 7), out_a)  # below the high: written before it
    assert seen.holds(("in", 0, 5, 0), out_a)
    assert not seen.holds(("in", 0, 5, 1), out_a)  # the same input's next output: not yet
    assert not seen.holds(("in", 0, 3, 0), out_b)  # another output partition: unknown
    assert not seen.holds(("in", 1, 3, 0), out_a)  # another input partition: unknown
    seen.saw(("in", 0, 6, 0), out_a)
    assert seen.holds(("in", 0, 5, 1), out_a)
    assert seen.highs() == {("in", 0, "out", 0): 6}


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, [PROPOSED, ORDERED, VIRTUAL])
        yield broker


def member(bootstrap: str, state: Path, group: str, log: Path) -> subprocess.Popen[bytes]:
    """`lattice dag run` as one member of the standby set `group`."""
    command = [sys.executable, "-m", "deploy.cli", "dag", "run", "--kafka", bootstrap]
    command += ["--group-id", "lattice-dag", "--active-group", group, "--state-dir", str(state)]
    command += ["--ghostdag-k", str(CONFIG.k), "--finality-depth", str(CONFIG.finality_depth)]
    with open(log, "wb") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def ordered_raws(bootstrap: str, topic: str) -> list[bytes]:
    return list(read_all(bootstrap, topic))


@pytest.mark.broker
def test_a_standby_takes_over_from_a_killed_active_with_no_gap_or_duplicate(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    bootstrap = own_broker.bootstrap
    blocks = simulate(3, 80, seed=21)
    group = f"dag-active-{uuid.uuid4().hex[:6]}"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    members = [member(bootstrap, tmp_path / f"m{i}", group, log) for i, log in enumerate(logs)]
    try:
        publish(bootstrap, blocks[:60])
        deadline = time.monotonic() + 90
        while not any("active; sending the" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            assert all(m.poll() is None for m in members), [log.read_text() for log in logs]
            time.sleep(0.2)
        while len(ordered_raws(bootstrap, ORDERED.name)) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        active = next(i for i, log in enumerate(logs) if "active; sending the" in log.read_text())
        feeding = threading.Thread(target=publish, args=(bootstrap, blocks[60:120]))
        feeding.start()  # blocks keep coming while the active member dies
        members[active].send_signal(signal.SIGKILL)
        members[active].wait(10)
        feeding.join(60)
        standby = 1 - active
        while "active; sending the" not in logs[standby].read_text():
            assert time.monotonic() < deadline + 30, logs[standby].read_text()
            time.sleep(0.2)
        publish(bootstrap, blocks[120:])  # and after the takeover, to the new active

        reference = output_topic(bootstrap)
        store = RocksStore(tmp_path / "ref")
        run_to_end(DagProcessor(CONFIG, name="ref", output=reference), store, bootstrap)
        store.close()
        expected = ordered_raws(bootstrap, reference.name)
        assert len(expected) > 50
        while len(ordered_raws(bootstrap, ORDERED.name)) < len(expected):
            assert time.monotonic() < deadline + 60, logs[standby].read_text()
            time.sleep(0.3)
        time.sleep(1)  # nothing more, and nothing twice
        assert ordered_raws(bootstrap, ORDERED.name) == expected
        virtual = ordered_raws(bootstrap, virtual_topic(reference).name)
        assert ordered_raws(bootstrap, VIRTUAL.name) == virtual  # the virtual chain's too
        assert "active; sending the" in logs[standby].read_text()
    finally:
        for m in members:
            if m.poll() is None:
                m.terminate()
                m.wait(30)
