"""Idempotent topic creation and topic inspection."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.kafka import Reader, client_config
from streams.topics import TopicSpec


class TopicMismatch(RuntimeError):
    """A topic exists with a partition count other than the catalogue's."""


@dataclass(frozen=True)
class TopicStatus:
    name: str
    partitions: int
    records: int


def admin_client(bootstrap: str, extra: Mapping[str, str] | None = None) -> AdminClient:
    return AdminClient(client_config(bootstrap, extra))


#: Replicas a topic gets by default, and how many must hold a record before it is
#: acknowledged (Kafka's usual 3 and 2).
MAX_REPLICAS = 3
MIN_IN_SYNC = 2


def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    *,
    replication: int = 0,
    timeout: float = 30.0,
    extra: Mapping[str, str] | None = None,
) -> list[str]:
    """Create the topics that are missing; returns the names created.

    `replication` 0: as many replicas as the cluster has brokers, up to 3. A topic with
    more than one replica gets `min.insync.replicas` 2: with the producers' `acks=all`, an
    acknowledged record is on two brokers, and a write that cannot be is refused rather
    than acknowledged on one.

    Safe to call any number of times and from several processes at once: a topic created
    concurrently by someone else counts as existing. An existing topic whose partition
    count differs from the catalogue is an error (keys would land elsewhere).
    """
    admin = admin_client(bootstrap, extra)
    specs = list(specs)
    existing = admin.list_topics(timeout=timeout).topics
    missing = [s for s in specs if s.name not in existing]
    created: list[str] = []
    if missing:
        if replication <= 0:
            replication = min(MAX_REPLICAS, len(admin.list_topics(timeout=timeout).brokers))
        durable = {"min.insync.replicas": str(MIN_IN_SYNC)} if replication > 1 else {}
        futures = admin.create_topics(
            [
                NewTopic(s.name, s.partitions, replication, config={**s.config(), **durable})
                for s in missing
            ],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                error: Any = exc.args[0]
                if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    metadata = admin.list_topics(timeout=timeout).topics
    for spec in specs:
        have = len(metadata[spec.name].partitions) if spec.name in metadata else 0
        if have != spec.partitions:
            raise TopicMismatch(
                f"topic {spec.name} has {have} partitions; the catalogue says {spec.partitions}"
            )
    return sorted(created)


def list_topics(bootstrap: str, *, timeout: float = 10.0) -> list[TopicStatus]:
    """Every topic on the cluster with its record count (internal topics excluded)."""
    admin = admin_client(bootstrap)
    names = sorted(n for n in admin.list_topics(timeout=timeout).topics if not n.startswith("__"))
    reader = Reader(bootstrap, client_id="lattice-topics")
    try:
        spans = reader.end_offsets_of(names, timeout)
        statuses = []
        for name in names:
            mine = [end - low for (topic, _), (low, end) in spans.items() if topic == name]
            statuses.append(TopicStatus(name, len(mine), sum(mine)))
        return statuses
    finally:
        reader.close()
