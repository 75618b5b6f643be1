"""Bad input on every topic of a running devnet: random and truncated bytes, another
schema's records and tombstones, between valid records. Nothing crashes or restarts, the
valid records after them are handled, and every processor that reads a bad record skips it
and says so once on `lattice.deadletters`. A fixed seed and a bounded count: the same
records every run."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.endpoints import Endpoints
from schemas.codec import DECODE_ERRORS, DecodeError, default_codec
from schemas.events import DeadLetter
from streams.kafka import Producer, Reader, from_beginning
from streams.topics import DEADLETTERS, TOPICS, TopicSpec, topic
from tests.devnets import Devnet, rpc
from tests.txs import signed

pytestmark = pytest.mark.e2e
PER_TOPIC = 20
#: Catalogue topics no process of the devnet that sends dead letters reads: outputs for
#: clients and for the gateway's views and analytics (which skip bad records quietly), and
#: the network record (read once at each start).
UNREAD = {
    # Read by the analytics sink only, which logs and counts what it skips (execution
    # follows lattice.blocks.virtual, whose bad records it dead-letters).
    "lattice.blocks.ordered",
    "lattice.tx.rejected",
    "lattice.blocks.executed",
    "lattice.state.accounts",
    "lattice.checkpoints",
    "lattice.jobs.proofs",
    "lattice.jobs.tokens",
    "lattice.network",
}
Junk = tuple[str, int, int]  # topic, partition, offset


def bad_records(rng: random.Random, schema: str) -> list[bytes | None]:
    """Bytes that are not a record of `schema`: noise, its header with noise, a record of
    another schema, a tombstone."""
    codec = default_codec()
    header = codec.schema(schema).header
    other = codec.encode("lattice.common.Position", {"topic": "x", "partition": 0, "offset": 1})
    out: list[bytes | None] = [None, other if schema != "lattice.common.Position" else b""]
    while len(out) < PER_TOPIC:
        noise = rng.randbytes(rng.randrange(0, 80))
        data = header + noise if rng.random() < 0.6 else noise
        try:
            codec.decode_event(data, schema)
        except DecodeError:
            out.append(data)
    return out


def send_bad_records(bootstrap: str) -> dict[Junk, bytes | None]:
    rng = random.Random(13)
    producer = Producer(bootstrap, gate=None)
    futures = {}
    for spec in TOPICS:
        if spec is DEADLETTERS:
            continue
        for value in bad_records(rng, spec.schema):
            partition = rng.randrange(spec.partitions)
            futures[producer.send_raw(spec.name, value, partition=partition)] = value
    sent = {}
    for future, value in futures.items():
        where = future.result(30)
        sent[(where.topic, where.partition, where.offset)] = value
    producer.close()
    return sent


def events(bootstrap: str, spec: TopicSpec) -> list[Any]:
    reader = Reader(bootstrap)
    try:
        messages = reader.read(from_beginning(spec.name, range(spec.partitions)))
        return [reader.decode(message).event for message in messages]
    finally:
        reader.close()


def dead_letters(bootstrap: str, wanted: set[str], timeout: float = 30) -> list[DeadLetter]:
    """The dead letters once every `wanted` topic has some and no more come."""
    deadline = time.monotonic() + timeout
    letters: list[DeadLetter] = []
    while True:
        before, letters = letters, events(bootstrap, DEADLETTERS)
        if wanted <= {letter.cause.topic for letter in letters} and len(letters) == len(before):
            return letters
        assert time.monotonic() < deadline, wanted - {letter.cause.topic for letter in letters}
        time.sleep(1)


def test_bad_records_on_every_topic_are_skipped_and_dead_lettered(tmp_path: Path) -> None:
    net = Devnet(tmp_path / "data", "--block-interval", "0.3", "--finality-depth", "3")
    try:
        net.start()
        net.wait_set_up()
        deadline = time.monotonic() + 60
        bootstrap = Endpoints.read(net.data_dir).kafka
        # The worker reads assignments from their end as of its start, and announces itself
        # once it has found it: from then on it reads what comes.
        while not events(bootstrap, topic("gpu.nodes")):
            assert time.monotonic() < deadline, "the worker never announced itself"
            time.sleep(0.3)
        sent = send_bad_records(bootstrap)
        tx = httpx.post(f"{net.url}/v1/transactions", json="0x" + signed(nonce=0).hex())
        assert tx.status_code == 202, tx.text
        deadline = time.monotonic() + 60
        while rpc(net.url, "eth_getTransactionReceipt", [tx.json()["hash"]]) is None:
            assert time.monotonic() < deadline, "no receipt for a transaction after bad input"
            time.sleep(0.3)
        letters = dead_letters(bootstrap, {t for t, _, _ in sent} - UNREAD)
        processes = rpc(net.url, "lattice_status")["processes"]
        troubled = [p for p in processes if p["state"] != "running" or p["restarts"]]
        assert troubled == [], troubled
    finally:
        net.stop()

    by_record: dict[Junk, set[str]] = defaultdict(set)
    for letter in letters:
        where = (letter.cause.topic, letter.cause.partition, letter.cause.offset)
        assert where in sent, f"{letter.processor} skipped a record that was not bad: {where}"
        assert letter.processor not in by_record[where], f"two dead letters for {where}"
        by_record[where].add(letter.processor)
        assert letter.code in DECODE_ERRORS and letter.reason
        assert letter.value == (sent[where] or b"")
    # Every topic a processor reads has its dead letters, and the processors that read a
    # partition skip every bad record there, each once.
    assert {t for t, _, _ in sent} - {t for t, _, _ in by_record} == UNREAD
    readers: dict[tuple[str, int], set[str]] = {}
    for name, partition, offset in sorted(sent):
        found = by_record[(name, partition, offset)]
        assert found == readers.setdefault((name, partition), found), (name, partition)
    assert any(name.startswith("lattice-worker-") for name in set().union(*readers.values()))
