"""The durable feed: the archiver sends each durable record on to the processes that asked
for its topic; a subscriber that stops reading is dropped, never waited for."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from streams.feed import SEND_BUFFER, FedMessage, FeedClient, FeedServer
from streams.frames import ArchivedRecord, frame, placed_frame
from streams.handover import address


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _name(tag: str) -> str:
    return f"lattice-test-feed-{tag}-{os.getpid()}-{threading.get_ident()}"


def _frames(topic: str, partition: int, offsets: range) -> list[tuple[str, bytes]]:
    return [
        (
            topic,
            placed_frame(
                topic,
                partition,
                ArchivedRecord(o, 1_000 + o, b"k%d" % o, b"v" * o, (("h", b"%d" % o),)),
            ),
        )
        for o in offsets
    ]


def _take_all(client: FeedClient, count: int) -> list[FedMessage]:
    got: list[FedMessage] = []
    deadline = time.monotonic() + 10
    while len(got) < count:
        assert time.monotonic() < deadline, f"{len(got)} of {count} records came"
        got += client.take(0.1, 1000)
    return got


def test_each_subscriber_gets_its_topics_records_in_order_as_messages() -> None:
    name = _name("order")
    server = FeedServer(name)
    server.start()
    jobs = FeedClient(name, ["lattice.jobs.a"])
    both = FeedClient(name, ["lattice.jobs.a", "lattice.jobs.b"])
    try:
        _until(lambda: server.subscribers() == 2)
        server.publish(_frames("lattice.jobs.a", 1, range(0, 30)))
        server.publish(_frames("lattice.jobs.b", 0, range(0, 5)))
        server.publish(_frames("lattice.jobs.a", 1, range(30, 40)))
        only_a = _take_all(jobs, 40)
        assert [m.offset() for m in only_a] == list(range(40))
        assert {(m.topic(), m.partition()) for m in only_a} == {("lattice.jobs.a", 1)}
        seventh = only_a[7]
        assert (seventh.key(), seventh.value(), seventh.headers()) == (
            b"k7",
            b"v" * 7,
            [("h", b"7")],
        )
        assert seventh.timestamp() == (1, 1_007) and seventh.error() is None
        mixed = _take_all(both, 45)
        assert [(m.topic(), m.offset()) for m in mixed] == [
            *(("lattice.jobs.a", o) for o in range(30)),
            *(("lattice.jobs.b", o) for o in range(5)),
            *(("lattice.jobs.a", o) for o in range(30, 40)),
        ]
        assert jobs.take(0.05, 10) == []  # nothing of topic b came to the first
    finally:
        jobs.close()
        both.close()
        server.close()


def test_a_subscriber_that_stops_reading_is_dropped_without_blocking_the_archiver() -> None:
    name = _name("stall")
    server = FeedServer(name)
    server.start()
    try:
        stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stalled.connect(address(name))
        stalled.sendall(frame(b'["lattice.jobs.a"]'))
        _until(lambda: server.subscribers() == 1)
        big = [
            (
                "lattice.jobs.a",
                placed_frame("lattice.jobs.a", 0, ArchivedRecord(0, 0, None, b"x" * 65_536)),
            )
        ]
        started = time.monotonic()
        for _ in range(4 * SEND_BUFFER // 65_536):
            server.publish(big)
        assert time.monotonic() - started < 5, "the archiver waited on a stalled subscriber"
        assert server.subscribers() == 0
        stalled.close()
    finally:
        server.close()


def test_a_garbled_subscription_is_dropped_and_a_client_connects_again_after_a_restart() -> None:
    name = _name("restart")
    server = FeedServer(name)
    server.start()
    client = FeedClient(name, ["lattice.jobs.a"])
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
            bad.connect(address(name))
            bad.sendall(b"\x03\x00\x00\x00\x00\x00\x00\x00abc")
            bad.settimeout(5)
            assert bad.recv(1) == b""
        _until(lambda: server.subscribers() == 1)
        server.close()
        _until(lambda: not client.connected.is_set())
        server = FeedServer(name)  # the archiver again, after a restart
        server.start()
        _until(lambda: server.subscribers() == 1)
        server.publish(_frames("lattice.jobs.a", 0, range(3)))
        assert [m.offset() for m in _take_all(client, 3)] == [0, 1, 2]
    finally:
        client.close()
        server.close()
