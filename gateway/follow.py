"""Background followers: a thread that feeds every record of a one-partition topic, from
the beginning and then live, to a handler (the gateway's DAG and checkpoint views)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from schemas.codec import CodecError, default_codec
from streams.kafka import Reader
from streams.topics import TopicSpec

log = logging.getLogger(__name__)


class Follower:
    def __init__(
        self,
        bootstrap: str,
        topic: TopicSpec,
        handle: Callable[[dict[str, Any], Any], None],
        name: str,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._handle = handle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        codec = default_codec()
        reader = Reader(self._bootstrap, client_id=f"lattice-gateway-{self._thread.name}")
        try:
            reader.assign({(self._topic.name, p): 0 for p in reader.partitions(self._topic.name)})
            while not self._stop.is_set():
                message = reader.poll_raw(0.2)
                if message is None or message.error() is not None:
                    continue
                try:
                    record = codec.decode(message.value(), expect=self._topic.schema).record
                except CodecError as exc:
                    log.warning("%s: skipping an undecodable record: %s", self._topic.name, exc)
                    continue
                self._handle(record, message)
        except Exception:
            log.exception("stopped following %s", self._topic.name)
        finally:
            reader.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
