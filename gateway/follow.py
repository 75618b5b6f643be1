"""The gateway's followers: processors over in-memory state, each run by the one runtime
(`processors.runtime`) in a thread of the gateway's process, from the beginning of their
topics and then live (the DAG view, the checkpoint view, the market view).

Their stores are `MemoryStore`s: a gateway rebuilds its views from the log at every start
and serves only from its own memory and its node's stores. A follower that fails logs why
and stops; the gateway keeps serving what it had.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from processors.abc import Processor
from processors.runtime import Runtime
from processors.state import MemoryStore

log = logging.getLogger(__name__)


class Follower:
    def __init__(self, processor: Processor[Any], bootstrap: str) -> None:
        self.processor = processor
        self._stop = threading.Event()
        # Nothing stored, so nothing to gate: a view may show a record before it is on
        # disk (a restart rebuilds it from what is).
        self._runtime = Runtime(processor, MemoryStore(), bootstrap, gate=None)
        self._thread = threading.Thread(target=self._run, name=processor.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._runtime.run(self._stop)
        except Exception:
            log.exception("%s stopped following the log", self.processor.name)

    @property
    def live(self) -> bool:
        """Whether it has caught up with its topics' ends as of its start."""
        return self._runtime.live

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
