"""Hand-over: the devnet's processes give each record the broker acknowledged straight to
the devnet's archiver, over a local socket, instead of leaving the archiver to fetch it.

Why: on the embedded broker a fetch that covers every partition costs it milliseconds of
CPU, and answers only when its wait runs out. The archiver fetching every 50 ms kept the
broker at a fifth of a core on an idle devnet, and every record a processor wrote waited
up to 50 ms to be durable, with every acknowledgement and every processor's input behind
it. Handed over, a record is on disk about a millisecond after the broker acknowledged
it. The archiver still fetches, seldom, as a backstop: for records of producers outside
the devnet, and for a record a process had acknowledged but died before handing over (the
archive would otherwise wait at that gap for ever).

The devnet names the socket in `LATTICE_ARCHIVE_SOCKET` (an abstract Unix socket: no
file, no path-length limit, gone with the devnet); a `streams.kafka.Producer` of a process
started under it hands over by default (`Forwarder`). Frames are `streams.frames`'
placed records. The hand-over is a shortcut, never the only way: a record lost on the
socket is fetched.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from streams.frames import ArchivedRecord, placed_frame, placed_records

log = logging.getLogger(__name__)

ENV = "LATTICE_ARCHIVE_SOCKET"
#: How long a process waits before trying a refused socket again.
RETRY_S = 1.0

Placed = tuple[tuple[str, int], ArchivedRecord]


def address(name: str) -> str:
    """The abstract socket address of `name` (the leading NUL keeps it off the disk)."""
    return "\0" + name


class Forwarder:
    """A producer's `on_acknowledged` hook: each acknowledged record to the archiver."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._refused_at: float | None = None

    @classmethod
    def from_env(cls) -> Forwarder | None:
        name = os.environ.get(ENV)
        return cls(name) if name else None

    def __call__(self, message: Any, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        record = ArchivedRecord.from_message(message, headers)
        data = placed_frame(message.topic(), message.partition(), record)
        with self._lock:
            try:
                self._connected().sendall(data)
            except OSError:
                # The archiver is gone or restarting: the fetch backstop has the record.
                self._close()

    def _connected(self) -> socket.socket:
        if self._socket is None:
            now = time.monotonic()
            if self._refused_at is not None and now - self._refused_at < RETRY_S:
                raise ConnectionRefusedError
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(address(self.name))
            except OSError:
                sock.close()
                self._refused_at = now
                raise
            self._socket, self._refused_at = sock, None
        return self._socket

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def close(self) -> None:
        with self._lock:
            self._close()


class Listener:
    """The archiver's end: accepts the devnet's processes and gives each batch of records
    that arrives to `deliver`, on one thread."""

    def __init__(self, name: str, deliver: Callable[[list[Placed]], None]) -> None:
        self.name = name
        self.deliver = deliver
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(address(name))
        self._server.listen(64)
        self._server.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server, selectors.EVENT_READ)
        self._buffers: dict[socket.socket, bytearray] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="archive-handover", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._server:
                    self._accept()
                else:
                    self._read(sock)

    def _accept(self) -> None:
        try:
            conn, _ = self._server.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self._buffers[conn] = bytearray()
        self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buffer = self._buffers[conn]
        buffer += data
        try:
            placed, pos = placed_records(buffer)
        except ValueError as exc:  # not a Lattice process: ignore it
            log.warning("archive hand-over: dropping a connection sending %s", exc)
            self._drop(conn)
            return
        records: list[Placed] = [((topic, part), record) for topic, part, record in placed]
        del buffer[:pos]
        if records:
            self.deliver(records)

    def _drop(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        self._buffers.pop(conn, None)
        conn.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for conn in list(self._buffers):
            self._drop(conn)
        self._selector.close()
        self._server.close()
