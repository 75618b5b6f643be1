"""Hot standbys: several members run one processor under one name; one of them is active.

Work done once per network (ordering the DAG, publishing the ledger's events) must not stop
when the host doing it dies, and must not be done twice. Every member reads every input and
keeps its state current (hot); only the active member sends its outputs. A standby commits
its outputs to its outbox like any other, then drops each one as it sees the active's on
the output topic (same input, same output: the processors are deterministic). When the
active dies, the consumer group behind `Election` gives another member the lead; that
member reads the output topics to their end, then sends what its outbox still holds, which
is what the dead member had not sent: no gap and no duplicate.

A processor with ticks (the matcher, the verifier) decides on its clock rather than from
each input alone, so it is led rather than followed: every member folds the whole log, its
own output topics included, as a restarted one does; only the active member ticks, and
only once it has read every input to the end it had when elected. What it decides then
follows everything the last active member sent. Losing the lead, it stops (`LostLead`).

`OnLog` (pure) is what a member knows of the log's outputs under its name. `Election` is
the group membership: partition 0 of the processor's first input topic, assigned to one
member and paused (the membership is the point, not the records).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from streams.kafka import client_config

log = logging.getLogger(__name__)

Cause = tuple[str, int, int, int]
Partition = tuple[str, int]

#: How long a dead active member keeps the lead: the group's session timeout.
SESSION_TIMEOUT_MS = 6_000


@dataclass
class OnLog:
    """The outputs the log holds under one name, by cause, per output partition.

    One writer at a time writes a partition, in input order, so the highest input offset
    seen on an output partition covers every lower one there; outputs of that same input
    are tracked one by one (a crash can fall between them)."""

    _high: dict[tuple[str, int, str, int], int] = field(default_factory=dict)
    _at_high: set[tuple[Cause, Partition]] = field(default_factory=set)

    def saw(self, cause: Cause, output: Partition) -> None:
        key = (cause[0], cause[1], *output)
        high = self._high.get(key, -1)
        if cause[2] > high:
            self._high[key] = cause[2]
            self._at_high = {(c, o) for c, o in self._at_high if (c[0], c[1], *o) != key}
        if cause[2] >= high:
            self._at_high.add((cause, output))

    def holds(self, cause: Cause, output: Partition) -> bool:
        high = self._high.get((cause[0], cause[1], *output))
        return high is not None and (cause[2] < high or (cause, output) in self._at_high)

    def __bool__(self) -> bool:
        return bool(self._high)

    def highs(self) -> dict[tuple[str, int, str, int], int]:
        return dict(self._high)


class LostLead(RuntimeError):
    """A led member (one that ticks) lost the election: it stops, and starts again as a
    standby (a supervisor restarts it)."""


class Election:
    """Membership of the group that picks the active member (`group`): the member holding
    partition 0 of `topic` is active."""

    def __init__(
        self, bootstrap: str, group: str, topic: str, config: Mapping[str, Any] | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._active = False
        self.topic = topic
        self._consumer = Consumer(
            client_config(
                bootstrap,
                {
                    "group.id": group,
                    "client.id": f"{group}-election",
                    "enable.auto.commit": False,
                    "session.timeout.ms": SESSION_TIMEOUT_MS,
                    "heartbeat.interval.ms": 500,
                },
                config,
            )
        )
        self._consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        consumer.pause(partitions)  # nothing is read: holding the partition is the lead
        with self._lock:
            self._active = any(p.partition == 0 for p in partitions)

    def _revoked(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._active = False

    @property
    def active(self) -> bool:
        with self._lock:
            return self._active

    def poll(self) -> None:
        """Serve the group's callbacks (and stay a member: it must be polled)."""
        self._consumer.poll(0)

    def close(self) -> None:
        self._consumer.close()
