"""Driving processors through the real runtime in tests: to the end of their inputs, and to
a crash at a chosen point (then the store is reopened like a restarted process would)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import pytest

from processors.abc import Processor, StateStore
from processors.runtime import Runtime
from streams.kafka import Reader

CrashPoint = Literal["before-commit", "mid-send", "before-acks"]


class Crash(Exception):
    """Stands for the process dying at the point it is raised."""


def run_to_end(processor: Processor[Any], store: StateStore, bootstrap: str) -> Runtime[Any]:
    """Run until every input as of the start is handled, committed and acknowledged."""
    runtime = Runtime(processor, store, bootstrap)
    runtime.run(threading.Event(), until_caught_up=True)
    return runtime


def arm(runtime: Runtime[Any], point: CrashPoint, after: int) -> None:
    """Make `runtime` die at `point`: before its commit number `after` (counting from 0),
    after `after` sends of a committed outbox, or with everything sent and acknowledged
    but the acknowledgements never written."""
    if point == "before-commit":
        commit, commits = runtime.commit, [0]

        def dying_commit() -> None:
            if commits[0] == after:
                raise Crash
            commits[0] += 1
            commit()

        runtime.commit = dying_commit  # type: ignore[method-assign]
    elif point == "mid-send":
        send, sent = runtime._send, [0]

        def dying_send(entry: Any) -> None:
            if sent[0] == after:
                runtime.producer.flush()  # what was handed to the producer still lands
                raise Crash
            sent[0] += 1
            send(entry)

        runtime._send = dying_send  # type: ignore[method-assign]
    else:
        store_commit = runtime.store.commit

        def forgetful_commit(positions: Any, outgoing: Any = (), acknowledged: Any = None) -> None:
            store_commit(positions, outgoing, {})  # the acknowledgements never reach the disk

        def dying_drain(timeout: float = 30.0) -> None:
            runtime.producer.flush()
            raise Crash

        runtime.store.commit = forgetful_commit  # type: ignore[method-assign]
        runtime.drain = dying_drain  # type: ignore[method-assign]


def crash(
    processor: Processor[Any],
    store: StateStore,
    bootstrap: str,
    point: CrashPoint,
    after: int = 0,
) -> None:
    """Run `processor` until it dies at `point`; the store is closed without committing
    anything further (reopen it to restart)."""
    runtime = Runtime(processor, store, bootstrap)
    arm(runtime, point, after)
    with pytest.raises(Crash):
        runtime.run(threading.Event(), until_caught_up=True)
    store.close()


def read_all(bootstrap: str, topic: str, decode: Callable[[Any], Any] | None = None) -> list[Any]:
    """Every record of a topic, in partition then offset order: raw values, or decoded."""
    reader = Reader(bootstrap)
    try:
        positions = {(topic, p): 0 for p in reader.partitions(topic)}
        messages = sorted(reader.read(positions), key=lambda m: (m.partition(), m.offset()))
        return [decode(m) if decode else m.value() for m in messages]
    finally:
        reader.close()


def run_while(
    runtime: Runtime[Any], done: Callable[[], bool], timeout: float = 60
) -> list[BaseException]:
    """Run `runtime` in a thread until `done()` (or it dies, or `timeout`); what it died of.

    For processors that never stop by themselves: an armed crash raises in the thread
    (or, before the acknowledgements, when stopped)."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            runtime.run(stop)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + timeout
    while thread.is_alive() and not done() and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join(30)
    return failures
