"""Running processors: the consume loop and clean shutdown on SIGTERM/SIGINT.

Processors own their offsets (see `processors.state`), so inputs are read by explicit
assignment from the stored position rather than from consumer-group commits; a broker that
forgot its group offsets (the embedded one, after a restart) changes nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from streams.kafka import Reader
from streams.metrics import serve as serve_metrics


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for a process's main loop to watch."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def configure_logging(level: str, metrics_port: int = 0) -> None:
    """Log format and level for a process; and its `/metrics` when given a port."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    serve_metrics(metrics_port)


def consume(
    bootstrap: str,
    client_id: str,
    start: dict[tuple[str, int], int],
    handle: Callable[[Any], object],
    stop: threading.Event,
    idle: Callable[[], object] | None = None,
) -> None:
    """Feed every message from `start` on to `handle` until `stop` is set; `idle` runs
    whenever a poll comes back empty-handed or after each message."""
    reader = Reader(bootstrap, client_id=client_id)
    try:
        reader.assign(start)
        while not stop.is_set():
            message = reader.poll_raw(0.1)
            if message is not None and message.error() is None:
                handle(message)
            if idle is not None:
                idle()
    finally:
        reader.close()
