"""The processor runtime against the real embedded broker and real rocksdict stores: each
output exactly once whatever the point a crash falls on, positions and state committed
together, undecodable records skipped, and a store rebuilt from the log not re-sending."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from processors.abc import Output, Pace, Processor, Subscription
from processors.runtime import CAUSE, ORIGIN, SEQUENCE, Runtime, headers_of, parse_cause
from processors.state import MemoryStore, RocksStore
from schemas.events import Position
from streams.broker import EmbeddedBroker
from streams.kafka import Producer, Reader, Record
from streams.topics import TopicSpec
from tests.processors.harness import crash, run_to_end

pytestmark = pytest.mark.broker
POSITION = "lattice.common.Position"


class Echo(Processor[RocksStore]):
    """Two outputs per input, and a count per key in the state."""

    role = "test"

    def __init__(self, source: TopicSpec, sink: TopicSpec, name: str = "echo") -> None:
        self.name = name
        self.source, self.sink = source, sink
        self.pace = Pace(rebuild_window=1000)

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(self.source),)

    def outputs(self) -> Sequence[TopicSpec]:
        return (self.sink,)

    def handle(self, record: Record[Any], state: RocksStore) -> Sequence[Output]:
        counter = b"count/" + (record.key or "").encode()
        state.put_int(counter, state.get_int(counter) + 1)
        return [
            Output(self.sink, Position(topic=record.topic, partition=record.partition, offset=n))
            for n in (record.offset, -record.offset - 1)
        ]


def fill(bootstrap: str, spec: TopicSpec, count: int) -> None:
    producer = Producer(bootstrap)
    for n in range(count):
        producer.send(spec, Position(topic="in", partition=0, offset=n), key=f"k{n % 5}")
    producer.close()


def outputs(bootstrap: str, spec: TopicSpec) -> list[tuple[dict[str, bytes], Position]]:
    reader = Reader(bootstrap)
    try:
        positions = {(spec.name, p): 0 for p in reader.partitions(spec.name)}
        found = []
        for message in reader.read(positions):
            event = reader.decode(message).event
            assert isinstance(event, Position)
            found.append((headers_of(message), event))
        return found
    finally:
        reader.close()


def check_exactly_once(bootstrap: str, source: TopicSpec, sink: TopicSpec, count: int) -> None:
    found = outputs(bootstrap, sink)
    causes = [parse_cause(h[CAUSE]) for h, _ in found]
    assert len(causes) == len(set(causes)), "an output was sent twice"
    expected = {(source.name, p, o, i) for p, o in _inputs(bootstrap, source) for i in (0, 1)}
    assert set(causes) == expected
    assert len(found) == 2 * count
    sequences = [h[SEQUENCE] for h, _ in found]
    assert len(set(sequences)) == len(sequences)
    assert all(h[ORIGIN] == b"echo" for h, _ in found)


def _inputs(bootstrap: str, spec: TopicSpec) -> list[tuple[int, int]]:
    reader = Reader(bootstrap)
    try:
        positions = {(spec.name, p): 0 for p in reader.partitions(spec.name)}
        return [(m.partition(), m.offset()) for m in reader.read(positions)]
    finally:
        reader.close()


@pytest.fixture
def topics(make_topic: Callable[..., TopicSpec]) -> tuple[TopicSpec, TopicSpec]:
    return make_topic(POSITION, partitions=3), make_topic(POSITION, partitions=2)


def test_outputs_once_and_state_with_the_offsets(
    broker: EmbeddedBroker, topics: tuple[TopicSpec, TopicSpec], tmp_path: Path
) -> None:
    source, sink = topics
    fill(broker.bootstrap, source, 40)
    store = RocksStore(tmp_path)
    run_to_end(Echo(source, sink), store, broker.bootstrap)
    check_exactly_once(broker.bootstrap, source, sink, 40)
    assert sum(store.get_int(b"count/k%d" % n) for n in range(5)) == 40
    assert store.outbox() == []
    assert sorted(store.positions()) == [(source.name, p) for p in range(3)]
    store.close()


@pytest.mark.parametrize("sent_before_crash", [0, 1, 7])
def test_a_crash_after_the_commit_and_some_sends_duplicates_nothing(
    broker: EmbeddedBroker,
    topics: tuple[TopicSpec, TopicSpec],
    tmp_path: Path,
    sent_before_crash: int,
) -> None:
    source, sink = topics
    fill(broker.bootstrap, source, 30)
    crash(Echo(source, sink), RocksStore(tmp_path), broker.bootstrap, "mid-send", sent_before_crash)
    again = RocksStore(tmp_path)
    assert again.outbox(), "the crash left outbox entries to settle"
    run_to_end(Echo(source, sink), again, broker.bootstrap)
    check_exactly_once(broker.bootstrap, source, sink, 30)
    assert again.outbox() == []
    again.close()


def test_a_crash_before_the_commit_handles_the_inputs_again(
    broker: EmbeddedBroker, topics: tuple[TopicSpec, TopicSpec], tmp_path: Path
) -> None:
    source, sink = topics
    fill(broker.bootstrap, source, 25)
    crash(Echo(source, sink), RocksStore(tmp_path), broker.bootstrap, "before-commit")
    again = RocksStore(tmp_path)
    assert again.positions() == {} and again.get(b"count/k0") is None
    run_to_end(Echo(source, sink), again, broker.bootstrap)
    check_exactly_once(broker.bootstrap, source, sink, 25)
    assert sum(again.get_int(b"count/k%d" % n) for n in range(5)) == 25
    again.close()


def test_acknowledged_but_unrecorded_entries_are_found_on_the_log(
    broker: EmbeddedBroker, topics: tuple[TopicSpec, TopicSpec], tmp_path: Path
) -> None:
    source, sink = topics
    fill(broker.bootstrap, source, 20)
    crash(Echo(source, sink), RocksStore(tmp_path), broker.bootstrap, "before-acks")
    again = RocksStore(tmp_path)
    assert len(again.outbox()) == 40, "every acknowledgement was lost with the process"
    run_to_end(Echo(source, sink), again, broker.bootstrap)
    check_exactly_once(broker.bootstrap, source, sink, 20)
    assert again.outbox() == []
    again.close()


def test_a_store_rebuilt_from_the_log_does_not_send_again(
    broker: EmbeddedBroker, topics: tuple[TopicSpec, TopicSpec], tmp_path: Path
) -> None:
    source, sink = topics
    fill(broker.bootstrap, source, 15)
    first = RocksStore(tmp_path / "first")
    run_to_end(Echo(source, sink), first, broker.bootstrap)
    first.close()
    fill(broker.bootstrap, source, 5)  # new inputs after the store was lost
    rebuilt = RocksStore(tmp_path / "rebuilt")
    run_to_end(Echo(source, sink), rebuilt, broker.bootstrap)
    check_exactly_once(broker.bootstrap, source, sink, 20)
    assert sum(rebuilt.get_int(b"count/k%d" % n) for n in range(5)) == 20
    rebuilt.close()


def test_undecodable_records_are_skipped_and_their_offsets_advance(
    broker: EmbeddedBroker, topics: tuple[TopicSpec, TopicSpec]
) -> None:
    source, sink = topics
    producer = Producer(broker.bootstrap)
    producer.send_raw(source.name, b"not avro", key="k0", partition=0)
    producer.send(source, Position(topic="in", partition=0, offset=0), key="k0", partition=0)
    producer.close()

    class Counting(Echo):
        def handle(self, record: Record[Any], state: Any) -> Sequence[Output]:
            state.put(b"seen/%d" % record.offset, b"")
            return ()

    store = MemoryStore()
    runtime = Runtime(Counting(source, sink), store, broker.bootstrap)
    runtime.run(threading.Event(), until_caught_up=True)
    assert runtime.skipped == 1
    assert [k for k, _ in store.scan(b"seen/")] == [b"seen/1"]
    assert store.positions()[(source.name, 0)] == 1


def test_ticks_run_once_caught_up_and_their_outputs_carry_no_cause(
    broker: EmbeddedBroker, topics: tuple[TopicSpec, TopicSpec]
) -> None:
    source, sink = topics
    fill(broker.bootstrap, source, 10)
    seen_before_tick: list[int] = []

    class Ticking(Echo):
        def handle(self, record: Record[Any], state: Any) -> Sequence[Output]:
            state.put(b"seen/%d/%d" % (record.partition, record.offset), b"")
            return ()

        def tick(self, now_ms: int, state: Any) -> Sequence[Output]:
            if state.get(b"ticked") is not None:
                return ()
            seen_before_tick.append(len(list(state.scan(b"seen/"))))
            state.put(b"ticked", b"")
            return [Output(sink, Position(topic="tick", partition=0, offset=now_ms))]

    stop = threading.Event()
    ticking = Ticking(source, sink)
    ticking.pace = Pace(tick_s=0.01)
    runtime = Runtime(ticking, MemoryStore(), broker.bootstrap)
    thread = threading.Thread(target=runtime.run, args=(stop,))
    thread.start()
    try:
        deadline = threading.Event()
        for _ in range(100):
            if outputs(broker.bootstrap, sink):
                break
            deadline.wait(0.1)
    finally:
        stop.set()
        thread.join(30)
    found = outputs(broker.bootstrap, sink)
    assert seen_before_tick == [10], "the tick ran before the inputs were caught up with"
    assert len(found) == 1 and CAUSE not in found[0][0] and found[0][1].topic == "tick"
