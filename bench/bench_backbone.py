"""Backbone throughput: the Avro codec and the Kafka path, each beside a peer.

    .venv/bin/python bench/bench_backbone.py [--records N]

Peers, measured in the same run on the same machine:
- codec: Lattice's single-object encode/decode (header + uint256 logical type + validation),
  of plain records and of the typed event classes producers and consumers use, beside bare
  fastavro schemaless write/read of the same records, and beside JSON;
- broker: Lattice's idempotent Avro producer and decoding reader beside a bare
  confluent-kafka producer/consumer moving the same bytes, on the embedded broker.
Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable

import fastavro
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka import Producer as RawProducer

from schemas.codec import default_codec, jsonable
from schemas.events import TransactionSubmitted
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer, Reader, from_beginning
from streams.topics import TopicSpec

NAME = "lattice.tx.TransactionSubmitted"


def record(i: int) -> dict[str, object]:
    return {
        "hash": i.to_bytes(32, "big"),
        "raw": b"\x02" + bytes(110),
        "sender": bytes(20),
        "tx_type": 2,
        "chain_id": 27182,
        "nonce": i,
        "gas_limit": 21000,
        "to": bytes(20),
        "value": 10**18 + i,
        "gas_price": None,
        "max_fee_per_gas": 2 * 10**9,
        "max_priority_fee_per_gas": 10**9,
        "received_at_ms": 1_700_000_000_000 + i,
        "source": "rest",
    }


def rate(label: str, count: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    per_s = count / elapsed
    print(f"  {label:<44} {per_s:>12,.0f} records/s  ({elapsed:.2f} s)")
    return per_s


def bench_codec(n: int) -> None:
    codec = default_codec()
    info = codec.schema(NAME)
    records = [record(i) for i in range(n)]
    print(f"codec, {n:,} {NAME} records")
    encoded: list[bytes] = []
    rate(
        "lattice encode (single-object, uint256)",
        n,
        lambda: encoded.extend(codec.encode(NAME, r) for r in records),
    )
    rate("lattice decode", n, lambda: [codec.decode(b) for b in encoded])
    events = [TransactionSubmitted.from_avro(r) for r in records]
    rate("lattice encode, typed events", n, lambda: [codec.encode_event(e) for e in events])
    rate("lattice decode to typed events", n, lambda: [codec.decode_event(b) for b in encoded])

    def bare_write() -> list[bytes]:
        out = []
        for r in records:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, info.parsed, r)
            out.append(buf.getvalue())
        return out

    bare: list[bytes] = []
    rate("peer: bare fastavro schemaless write", n, lambda: bare.extend(bare_write()))
    rate(
        "peer: bare fastavro schemaless read",
        n,
        lambda: [fastavro.schemaless_reader(io.BytesIO(b), info.parsed) for b in bare],
    )
    rate("peer: JSON (hex bytes) dumps", n, lambda: [json.dumps(jsonable(r)) for r in records])
    print(
        f"  sizes: avro {len(encoded[0])} B/record, json {len(json.dumps(jsonable(records[0])))} B"
    )


def bench_broker(n: int) -> None:
    print(f"embedded broker (tansu), {n:,} records, 4 partitions")
    with EmbeddedBroker() as broker:
        ours = TopicSpec("bench.lattice", NAME, "k", 4)
        peer = TopicSpec("bench.raw", NAME, "k", 4)
        ensure_topics(broker.bootstrap, [ours, peer])
        records = [TransactionSubmitted.from_avro(record(i)) for i in range(n)]
        codec = default_codec()
        payloads = [codec.encode_event(r) for r in records]

        producer = Producer(broker.bootstrap, config={"linger.ms": 5})

        def produce_ours() -> None:
            for i, r in enumerate(records):
                producer.send(ours, r, key=f"k{i % 64}")
            producer.flush()

        rate("lattice producer (typed event, encode + idempotent)", n, produce_ours)
        producer.close()

        raw = RawProducer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})

        def produce_raw() -> None:
            for i, p in enumerate(payloads):
                while True:
                    try:
                        raw.produce(peer.name, p, key=f"k{i % 64}")
                        break
                    except BufferError:
                        raw.poll(0.05)
            raw.flush()

        rate("peer: bare confluent-kafka producer", n, produce_raw)

        reader = Reader(broker.bootstrap)
        rate(
            "lattice reader (decode to typed events) to end",
            n,
            lambda: [reader.decode(m) for m in reader.read(from_beginning(ours.name, range(4)))],
        )
        reader.close()

        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": "bench",
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 100,
            }
        )

        def consume_raw() -> None:
            consumer.assign([TopicPartition(peer.name, p, 0) for p in range(4)])
            eof = 0
            while eof < 4:
                m = consumer.poll(1)
                if m is not None and m.error() is not None:
                    eof += 1

        rate("peer: bare confluent-kafka consumer to end", n, consume_raw)
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    args = parser.parse_args()
    bench_codec(args.records)
    bench_broker(args.records)


if __name__ == "__main__":
    main()
