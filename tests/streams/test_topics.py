"""The topic catalogue's pure helpers."""

from __future__ import annotations

import pytest

from streams.admin import admin_client, ensure_topics
from streams.broker import EmbeddedBroker
from streams.topics import TopicSpec, murmur2, partition_of

# The Java client's own expectations for its partitioner hash (as signed 32-bit ints).
JAVA_CLIENT_VECTORS = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize(("text", "expected"), sorted(JAVA_CLIENT_VECTORS.items()))
def test_murmur2_matches_the_java_client(text: str, expected: int) -> None:
    assert murmur2(text.encode()) == expected & 0xFFFFFFFF


def test_partitions_are_the_positive_hash_modulo_the_count() -> None:
    assert [partition_of(text, 4) for text in sorted(JAVA_CLIENT_VECTORS)] == [
        (h & 0x7FFFFFFF) % 4 for _, h in sorted(JAVA_CLIENT_VECTORS.items())
    ]
    assert all(0 <= partition_of(f"0x{i:040x}", 7) < 7 for i in range(100))


@pytest.mark.broker
def test_topics_take_the_cluster_s_replicas_by_default(broker: EmbeddedBroker) -> None:
    """Replication 0 (the default) is the broker count: one, on the embedded broker."""
    spec = TopicSpec("lattice.test.replicas", "lattice.tx.TransactionSubmitted", "k", 2)
    assert ensure_topics(broker.bootstrap, [spec]) == [spec.name]
    topic = admin_client(broker.bootstrap).list_topics(spec.name, timeout=10).topics[spec.name]
    assert [len(p.replicas) for p in topic.partitions.values()] == [1, 1]
