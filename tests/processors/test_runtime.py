"""The processor runtime against the real embedded broker and real rocksdict stores: each
output exactly once whatever the point a crash falls on, positions and state committed
together, undecodable records skipped, and a store rebuilt from the log not re-sending."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from processors.abc import Output, Pace, Processor, Subscription
from processors.runtime import CAUSE, ORIGIN, SEQUENCE, Runtime, headers_of, parse_cause
from processors.state import MemoryStore, RocksStore
from schemas.codec import default_codec
from schemas.events import DeadLetter, Position, TransactionRejected
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer, Reader, Record
from streams.topics import DEADLETTERS, TopicSpec
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


class Counting(Echo):
    """Notes each record it handles; sends nothing."""

    def handle(self, record: Record[Any], state: Any) -> Sequence[Output]:
        state.put(b"seen/%d" % record.offset, b"")
        return ()


def send_junk(bootstrap: str, source: TopicSpec) -> dict[int, str]:
    """Records that are not the topic's, between valid ones, on partition 0: the offset of
    each and the dead letter code it must get."""
    codec = default_codec()
    valid = codec.encode_event(Position(topic="in", partition=0, offset=0))
    other = codec.encode_event(TransactionRejected(
        hash=b"", sender=b"", nonce=0, block_number=0, dag_block=b"", code="", reason="",
        cause=Position(topic="in", partition=0, offset=0),
    ))  # fmt: skip
    records: list[tuple[bytes | None, str | None]] = [
        (valid, None),
        (b"not avro", "bad_marker"),
        (valid[:-1], "corrupt_body"),
        (valid + b"\x00", "trailing_bytes"),
        (other, "wrong_schema"),
        (None, "no_value"),
        (valid, None),
    ]
    producer = Producer(bootstrap)
    for value, _ in records:
        producer.send_raw(source.name, value, key="k0", partition=0, timestamp_ms=1234)
    producer.close()
    return {offset: code for offset, (_, code) in enumerate(records) if code is not None}


def dead_letters(bootstrap: str, name: str) -> list[tuple[dict[str, bytes], DeadLetter]]:
    reader = Reader(bootstrap)
    try:
        found = []
        for message in reader.read({(DEADLETTERS.name, 0): 0}):
            letter = reader.decode(message).event
            assert isinstance(letter, DeadLetter)
            if letter.processor == name:
                assert message.key() == name.encode()
                assert message.timestamp()[1] == 1234  # the skipped record's
                found.append((headers_of(message), letter))
        return found
    finally:
        reader.close()


def test_undecodable_records_become_dead_letters_and_their_offsets_advance(
    broker: EmbeddedBroker, topics: tuple[TopicSpec, TopicSpec], tmp_path: Path
) -> None:
    ensure_topics(broker.bootstrap, [DEADLETTERS])
    source, sink = topics
    junk = send_junk(broker.bootstrap, source)
    name = f"counting-{uuid.uuid4().hex[:8]}"
    store = RocksStore(tmp_path / "first")
    runtime = Runtime(Counting(source, sink, name), store, broker.bootstrap)
    runtime.run(threading.Event(), until_caught_up=True)
    assert runtime.skipped == len(junk)
    assert [k for k, _ in store.scan(b"seen/")] == [b"seen/0", b"seen/6"]
    assert store.positions()[(source.name, 0)] == 6
    assert store.outbox() == []
    store.close()

    found = dead_letters(broker.bootstrap, name)
    assert {letter.cause.offset: letter.code for _, letter in found} == junk
    assert len(found) == len(junk)
    for headers, letter in found:
        assert letter.cause == Position(topic=source.name, partition=0, offset=letter.cause.offset)
        assert headers[ORIGIN] == name.encode()
        assert parse_cause(headers[CAUSE]) == (source.name, 0, letter.cause.offset, 0)
        assert letter.key == "k0" and letter.reason
    by_code = {letter.code: letter for _, letter in found}
    assert by_code["bad_marker"].value == b"not avro" and by_code["bad_marker"].value_size == 8
    assert by_code["no_value"].value == b"" and by_code["no_value"].value_size == 0

    # A store rebuilt from the log skips the same records and finds their dead letters
    # sent; another processor sends its own.
    rebuilt = MemoryStore()
    again = Runtime(Counting(source, sink, name), rebuilt, broker.bootstrap)
    again.run(threading.Event(), until_caught_up=True)
    assert again.skipped == len(junk)
    assert rebuilt.positions()[(source.name, 0)] == 6
    assert [k for k, _ in rebuilt.scan(b"seen/")] == [b"seen/0", b"seen/6"]
    assert len(dead_letters(broker.bootstrap, name)) == len(junk)
    other = f"{name}-other"
    run_to_end(Counting(source, sink, other), MemoryStore(), broker.bootstrap)
    assert len(dead_letters(broker.bootstrap, other)) == len(junk)


def test_a_processor_without_dead_letters_only_skips(
    broker: EmbeddedBroker, topics: tuple[TopicSpec, TopicSpec]
) -> None:
    ensure_topics(broker.bootstrap, [DEADLETTERS])
    source, sink = topics
    junk = send_junk(broker.bootstrap, source)

    class View(Counting):
        dead_letters = False

    name = f"view-{uuid.uuid4().hex[:8]}"
    runtime = Runtime(View(source, sink, name), MemoryStore(), broker.bootstrap)
    runtime.run(threading.Event(), until_caught_up=True)
    assert runtime.skipped == len(junk)
    assert dead_letters(broker.bootstrap, name) == []


def test_an_error_of_the_processor_on_a_valid_record_is_not_skipped(
    broker: EmbeddedBroker, topics: tuple[TopicSpec, TopicSpec]
) -> None:
    source, sink = topics
    fill(broker.bootstrap, source, 1)

    class Buggy(Echo):
        def handle(self, record: Record[Any], state: Any) -> Sequence[Output]:
            raise ZeroDivisionError("a bug")

    store = MemoryStore()
    with pytest.raises(ZeroDivisionError):
        run_to_end(Buggy(source, sink, f"buggy-{uuid.uuid4().hex[:8]}"), store, broker.bootstrap)
    assert store.positions() == {}


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


class FedEcho(Echo):
    """Echo, its input on a request's path: fed by the devnet's durable feed."""

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(self.source, fed=True),)


def _run_live(runtime: Runtime[Any]) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=runtime.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 30
    while runtime._feed is None or not runtime._feed.connected.is_set():
        assert time.monotonic() < deadline, "the runtime did not subscribe to the feed"
        time.sleep(0.01)
    return stop, thread


def _until_outputs(bootstrap: str, sink: TopicSpec, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(outputs(bootstrap, sink)) < count:
        assert time.monotonic() < deadline, "the inputs were not all handled"
        time.sleep(0.05)


def test_fed_inputs_are_handled_once_each_in_offset_order_by_feed_or_fetch(
    broker: EmbeddedBroker,
    topics: tuple[TopicSpec, TopicSpec],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under the devnet's archiver every record comes twice (fed once durable, and
    fetched); each is handled once, and the feed brings them first."""
    from streams.archive import Archiver, TopicArchive
    from streams.handover import ENV

    source, sink = topics
    name = f"lattice-test-fed-{uuid.uuid4().hex[:8]}"
    archiver = Archiver(
        TopicArchive(tmp_path / "archive"), broker.bootstrap, [source], handover=name
    )
    archiver.start()
    monkeypatch.setenv(ENV, name)
    # A seldom fetch, so that the feed is first for some records even when a loaded
    # machine syncs the archive slowly (at the devnet's 100 ms it can lose every race).
    monkeypatch.setattr("processors.runtime.FED_READ", {"fetch.wait.max.ms": 1500})
    fill(broker.bootstrap, source, 10)  # before the start: fetched while catching up
    store = RocksStore(tmp_path / "state")
    runtime = Runtime(FedEcho(source, sink), store, broker.bootstrap, gate=None)
    stop, thread = _run_live(runtime)
    try:
        producer = Producer(broker.bootstrap)  # hands over to the archiver, as in a devnet
        for n in range(30):
            producer.send(source, Position(topic="in", partition=0, offset=n), key=f"k{n % 5}")
            time.sleep(0.005)
        producer.close()
        _until_outputs(broker.bootstrap, sink, 80)
    finally:
        stop.set()
        thread.join(30)
        archiver.stop()
    check_exactly_once(broker.bootstrap, source, sink, 40)
    assert runtime.fed > 0, "nothing came by the feed"
    handled = [(e.partition, e.offset) for _, e in outputs(broker.bootstrap, sink) if e.offset >= 0]
    for partition in range(3):
        offsets = [o for p, o in handled if p == partition]
        assert offsets == sorted(offsets) == list(range(len(offsets)))
    store.close()


def test_a_fed_record_ahead_of_the_fetch_waits_for_it_and_duplicates_are_skipped(
    broker: EmbeddedBroker,
    make_topic: Callable[..., TopicSpec],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.feed import FeedServer, feed_name
    from streams.frames import ArchivedRecord, placed_frame
    from streams.handover import ENV

    source, sink = make_topic(POSITION, partitions=1), make_topic(POSITION, partitions=1)
    name = f"lattice-test-ahead-{uuid.uuid4().hex[:8]}"
    server = FeedServer(feed_name(name))  # an archiver's feed, driven by hand
    server.start()
    monkeypatch.setenv(ENV, name)
    fill(broker.bootstrap, source, 5)
    store = RocksStore(tmp_path)
    runtime = Runtime(FedEcho(source, sink), store, broker.bootstrap, gate=None)
    stop, thread = _run_live(runtime)
    codec = default_codec()

    def feed(offset: int) -> None:
        value = codec.encode_event(Position(topic="in", partition=0, offset=offset))
        record = ArchivedRecord(offset, 1, b"k0", value, ())
        server.publish([(source.name, placed_frame(source.name, 0, record))])

    try:
        _until_outputs(broker.bootstrap, sink, 10)
        feed(7)  # ahead: offsets 5 and 6 are not handled yet
        feed(2)  # handled already
        fill(broker.bootstrap, source, 5)  # offsets 5..9, fetched
        _until_outputs(broker.bootstrap, sink, 20)
        assert runtime.fed == 0
        feed(10)  # the next one: handled as it comes, before any fetch
        _until_outputs(broker.bootstrap, sink, 22)
        assert runtime.fed == 1
        # A partition it does not read (the feed sends a topic's every partition): ignored.
        value = codec.encode_event(Position(topic="in", partition=1, offset=0))
        stray = ArchivedRecord(0, 1, b"k1", value, ())
        server.publish([(source.name, placed_frame(source.name, 1, stray))])
        feed(11)
        _until_outputs(broker.bootstrap, sink, 24)
        assert runtime.fed == 2
    finally:
        stop.set()
        thread.join(30)
        server.close()
        store.close()
    handled = [e.offset for _, e in outputs(broker.bootstrap, sink) if e.offset >= 0]
    assert handled == list(range(12))


def test_a_processor_that_handles_together_gets_each_poll_at_once_each_output_with_its_cause(
    broker: EmbeddedBroker, topics: tuple[TopicSpec, TopicSpec], tmp_path: Path
) -> None:
    source, sink = topics
    sizes: list[int] = []

    class Together(Echo):
        def handle_all(self, records: Sequence[Record[Any]], state: Any) -> list[Sequence[Output]]:
            sizes.append(len(records))
            return [self.handle(record, state) for record in reversed(records)][::-1]

    together = Together(source, sink)
    together.pace = Pace(rebuild_window=1000, together=True, batch=50)
    fill(broker.bootstrap, source, 60)
    store = RocksStore(tmp_path)
    run_to_end(together, store, broker.bootstrap)
    check_exactly_once(broker.bootstrap, source, sink, 60)
    assert max(sizes) > 1 and sum(sizes) <= 60
    store.close()
