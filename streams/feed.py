"""The durable feed: the devnet's archiver sends each record, the moment it is on disk, to
the local processes that asked for its topic, over a local socket.

Why: the embedded broker answers a waiting fetch only every few milliseconds (`streams.kafka`
`LOW_LATENCY_READ`), and under the devnet a processor may handle a record only once it is
durable (`streams.durable`). On the market's request path (a job submitted, assigned,
answered, and the answer back to the waiting request) every hop paid a fetch wait and a
wait for the archive; short fetch waits cost the broker a core. The archiver already holds
every record a devnet process sent (`streams.handover`) and knows when it is on disk, so it
is the one place that can send a record on exactly when a processor may handle it.

The feed is a shortcut, never the only way, as the hand-over is: a subscriber keeps its
fetching reader, handles each partition's records in offset order whichever way they came
(`processors.runtime`), and a record missed on the socket (a subscriber too slow to read,
the archiver restarting, a producer outside the devnet) is fetched. A subscriber whose
socket is full is dropped rather than waited for: the archiver's writer must never block
on a reader; the subscriber connects again.

Wire: the subscriber sends one frame (`streams.frames`) whose body is the JSON list of
topics it wants; the archiver sends placed records (the journal's own frames). The socket
is the hand-over's name with `-feed` added (abstract: no file).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import threading
import zlib
from collections.abc import Iterable, Sequence

from streams.frames import FRAME, ArchivedRecord, frame, placed_records
from streams.handover import ENV as HANDOVER_ENV
from streams.handover import RETRY_S, address

log = logging.getLogger(__name__)

#: Room the archiver asks for in each subscriber's socket before dropping it (the kernel
#: caps it at `net.core.wmem_max`, about 200 KiB by default: a subscriber that far behind
#: is dropped, and fetches).
SEND_BUFFER = 4 << 20
#: Records a subscriber holds for its processor at most; beyond, it lets them go (they
#: are fetched: a processor that far behind gains nothing from the feed).
MAX_READY = 50_000


#: A fed reader's fetches, with the feed running: the fetch is the backstop then, and a
#: short wait only costs the broker (`streams.kafka.LOW_LATENCY_READ`). Not longer: a
#: fed processor finds the end of its inputs by a fetch coming back empty, so a restarted
#: worker with 500 ms waits answered later, and in a fault run two jobs whose lease ran
#: out meanwhile were run by both nodes (stop 29; the verifier now pays one answer).
FED_READ = {"fetch.wait.max.ms": 100}


def feed_name(handover: str) -> str:
    return handover + "-feed"


def devnet_feed() -> str | None:
    """The feed's name, where this process runs under a devnet's archiver."""
    handover = os.environ.get(HANDOVER_ENV)
    return feed_name(handover) if handover else None


class FeedServer:
    """The archiver's end: accepts subscribers and sends them their topics' frames."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(address(name))
        self._server.listen(64)
        self._server.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server, selectors.EVENT_READ)
        self._lock = threading.Lock()
        #: Subscribed sockets and their topics; sockets still sending their subscription.
        self._subscribers: dict[socket.socket, frozenset[str]] = {}
        self._pending: dict[socket.socket, bytearray] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="archive-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, frames: Sequence[tuple[str, bytes]]) -> None:
        """Send these durable records (topic, placed frame) to whoever wants them."""
        with self._lock:
            subscribers = list(self._subscribers.items())
        for sock, topics in subscribers:
            data = b"".join(body for topic, body in frames if topic in topics)
            if data and not self._send(sock, data):
                self._drop(sock)

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        try:
            while view:
                sent = sock.send(view)
                view = view[sent:]
        except OSError:  # full (a stalled reader) or gone: it fetches what it missed
            return False
        return True

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    self._accept() if sock is self._server else self._read(sock)
                except OSError as exc:  # one connection's trouble; the feed serves on
                    log.warning("archive feed: %s", exc)
                    if sock is not self._server:
                        self._drop(sock)

    def _accept(self) -> None:
        try:
            conn, _ = self._server.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        with self._lock:
            self._pending[conn] = bytearray()
        self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        """The subscription, or the subscriber hanging up."""
        try:
            data = conn.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        with self._lock:
            buffer = self._pending.get(conn)
        if not data or buffer is None:  # gone, or talking after its subscription
            self._drop(conn)
            return
        buffer += data
        if len(buffer) < FRAME.size:
            return
        length, crc = FRAME.unpack_from(buffer, 0)
        if len(buffer) < FRAME.size + length:
            return
        body = bytes(buffer[FRAME.size : FRAME.size + length])
        try:
            if zlib.crc32(body) != crc:
                raise ValueError("bad checksum")
            wanted = json.loads(body)
            if not isinstance(wanted, list) or not all(isinstance(t, str) for t in wanted):
                raise ValueError("a subscription is a list of topic names")
            topics = frozenset(wanted)
        except ValueError as exc:
            log.warning("archive feed: dropping a subscriber: %s", exc)
            self._drop(conn)
            return
        with self._lock:
            self._pending.pop(conn, None)
            self._subscribers[conn] = topics

    def _drop(self, conn: socket.socket) -> None:
        with self._lock:
            known = self._subscribers.pop(conn, None) is not None
            known = self._pending.pop(conn, None) is not None or known
        if not known:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            conns = [*self._subscribers, *self._pending]
        for conn in conns:
            self._drop(conn)
        self._selector.close()
        self._server.close()


class FedMessage:
    """A record from the feed, shaped as the consumer's messages are (what the runtime and
    `streams.kafka.record_of` read of them)."""

    __slots__ = ("_partition", "_record", "_topic")

    def __init__(self, topic: str, partition: int, record: ArchivedRecord) -> None:
        self._topic, self._partition, self._record = topic, partition, record

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._record.offset

    def error(self) -> None:
        return None

    def key(self) -> bytes | None:
        return self._record.key

    def value(self) -> bytes | None:
        return self._record.value

    def headers(self) -> list[tuple[str, bytes]]:
        return list(self._record.headers)

    def timestamp(self) -> tuple[int, int]:
        return (1, self._record.timestamp_ms)  # create time, as the producer stamped it


class FeedClient:
    """A process's end: the durable records of some topics, as the archiver sends them.
    A thread reads the socket (connecting again after a drop); `take` waits for them."""

    def __init__(self, name: str, topics: Iterable[str]) -> None:
        self.name = name
        self.topics = sorted(set(topics))
        self._ready: list[FedMessage] = []
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._socket: socket.socket | None = None
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, topics: Iterable[str]) -> FeedClient | None:
        """A subscription to the devnet's feed, if this process runs under one."""
        name = devnet_feed()
        return cls(name, topics) if name else None

    def take(self, timeout: float, limit: int) -> list[FedMessage]:
        """The records that came (waiting up to `timeout` for the first), at most `limit`."""
        with self._wake:
            if not self._ready and timeout > 0:
                self._wake.wait(timeout)
            taken, self._ready = self._ready[:limit], self._ready[limit:]
        return taken

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._connect()
                self._receive()
            except OSError:
                pass
            finally:
                self.connected.clear()
                self._close()
            self._stop.wait(RETRY_S)

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket = sock
        sock.connect(address(self.name))
        sock.sendall(frame(json.dumps(self.topics).encode()))
        sock.settimeout(0.2)  # to see `close`
        self.connected.set()

    def _receive(self) -> None:
        assert self._socket is not None
        buffer = bytearray()
        while not self._stop.is_set():
            try:
                data = self._socket.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                return  # the archiver hung up (stopped, or dropped a slow reader)
            buffer += data
            messages, used = _messages(buffer)
            del buffer[:used]
            messages = [m for m in messages if m.topic() in self.topics]  # only what it asked
            if messages and len(self._ready) < MAX_READY:
                with self._wake:
                    self._ready += messages
                    self._wake.notify()

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)


def _messages(buffer: bytearray) -> tuple[list[FedMessage], int]:
    """The whole frames at the start of `buffer`, as messages, and the bytes they took."""
    try:
        placed, used = placed_records(buffer)
    except ValueError as exc:
        raise OSError(f"archive feed: {exc}") from exc
    return [FedMessage(*each) for each in placed], used
