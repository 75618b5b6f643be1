"""The hand-over: what a producer of the devnet sends reaches the archiver over a socket."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from schemas.events import Position
from streams.broker import EmbeddedBroker
from streams.frames import ArchivedRecord
from streams.handover import Forwarder, Listener, Placed, address
from streams.kafka import Producer
from streams.topics import TopicSpec


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.broker
def test_a_producer_hands_each_acknowledged_record_over(
    broker: EmbeddedBroker, make_topic: Callable[..., TopicSpec]
) -> None:
    spec = make_topic("lattice.common.Position", partitions=2)
    name = f"lattice-test-{os.getpid()}-{threading.get_ident()}"
    got: list[Placed] = []
    listener = Listener(name, got.extend)
    listener.start()
    producer = Producer(broker.bootstrap, gate=None, on_acknowledged=Forwarder(name))
    try:
        sent = []
        for i in range(50):
            event = Position(topic="x", partition=0, offset=i)
            sent.append(producer.send(spec, event, key=f"k{i % 7}", timestamp_ms=1_000 + i))
        producer.flush()
        _until(lambda: len(got) == 50)
        delivered = {(f.result().partition, f.result().offset) for f in sent}
        assert {(p, r.offset) for (t, p), r in got} == delivered
        assert {t for (t, _), _ in got} == {spec.name}
        assert sorted(r.timestamp_ms for _, r in got) == list(range(1_000, 1_050))
    finally:
        producer.close()
        listener.close()


def test_the_listener_reads_frames_split_anywhere_and_drops_garbage() -> None:
    from streams.frames import placed_frame

    name = f"lattice-test-split-{os.getpid()}"
    got: list[Placed] = []
    listener = Listener(name, got.extend)
    listener.start()
    try:
        records = [ArchivedRecord(i, i, b"k", b"v" * i, (("h", b"1"),)) for i in range(20)]
        data = b"".join(placed_frame("lattice.t", 1, r) for r in records)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(address(name))
            for i in range(0, len(data), 7):
                sock.sendall(data[i : i + 7])
                time.sleep(0.0005)
            _until(lambda: len(got) == 20)
        assert got == [(("lattice.t", 1), r) for r in records]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
            bad.connect(address(name))
            bad.sendall(b"\x03\x00\x00\x00\x00\x00\x00\x00abc")
            bad.settimeout(5)
            assert bad.recv(1) == b""  # dropped, and the listener serves on
        forwarder = Forwarder(name)
        assert forwarder._connected() is not None
        forwarder.close()
    finally:
        listener.close()


@pytest.mark.broker
def test_a_producer_without_an_archiver_listening_sends_as_ever(
    broker: EmbeddedBroker, make_topic: Callable[..., TopicSpec]
) -> None:
    spec = make_topic("lattice.common.Position", partitions=1)
    forwarder = Forwarder(f"lattice-test-nobody-{os.getpid()}")
    producer = Producer(broker.bootstrap, gate=None, on_acknowledged=forwarder)
    try:
        # The archiver's fetch is the backstop: no error, the record is on the broker.
        future = producer.send(spec, Position(topic="x", partition=0, offset=1), key="k")
        assert future.result(timeout=10).offset == 0
    finally:
        producer.close()
