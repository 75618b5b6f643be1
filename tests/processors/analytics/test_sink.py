"""The analytics sink against the real embedded broker and real DuckDB files."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from processors.analytics.processor import AnalyticsSink
from processors.analytics.store import AnalyticsStore
from processors.analytics.tables import TABLES
from processors.execution.transactions import ChainRules, decode_transaction
from processors.runtime import Runtime
from schemas.events import BlockExecuted, BlockOrdered, Receipt
from streams.broker import EmbeddedBroker
from streams.kafka import Producer
from streams.settings import CHAIN_ID
from streams.topics import TopicSpec
from tests.processors.harness import crash
from tests.txs import signed

RULES = ChainRules(CHAIN_ID)
CAUSE = {"topic": "t", "partition": 0, "offset": 0}


def ordered(index: int, raws: list[bytes]) -> BlockOrdered:
    chain = index.to_bytes(32)
    return BlockOrdered.from_avro(
        {
            "chain_index": index,
            "hash": chain,
            "selected_parent": (index - 1).to_bytes(32) if index else None,
            "blue_score": index,
            "blue_work": index,
            "timestamp_ms": 1_700_000_000_000 + index,
            "proposer": b"\x09" * 20,
            "mergeset_blues": [chain, b"\x0b" * 32],
            "mergeset_reds": [b"\x0c" * 32] if index == 1 else [],
            "transactions": [
                {
                    "hash": decode_transaction(r, RULES).hash,
                    "raw": r,
                    "dag_block": chain,
                    "index_in_block": i,
                }
                for i, r in enumerate(raws)
            ],
            "cause": CAUSE,
        }
    )


def executed(number: int, hashes: list[bytes]) -> BlockExecuted:
    return BlockExecuted.from_avro(
        {
            "number": number,
            "hash": number.to_bytes(32),
            "parent_hash": (number - 1).to_bytes(32),
            "dag_block": number.to_bytes(32),
            "state_root": b"\x01" * 32,
            "receipts_root": b"\x02" * 32,
            "transactions_root": b"\x03" * 32,
            "logs_bloom": b"\x00" * 256,
            "gas_used": 21_000 * len(hashes),
            "gas_limit": 30_000_000,
            "base_fee_per_gas": 10**9,
            "timestamp": 1_700_000_000 + number,
            "fee_recipient": b"\x09" * 20,
            "transaction_hashes": hashes,
            "rejected_count": 0,
            "cause": CAUSE,
        }
    )


def receipt(tx_hash: bytes, number: int, index: int) -> Receipt:
    return Receipt.from_avro(
        {
            "transaction_hash": tx_hash,
            "transaction_index": index,
            "block_number": number,
            "block_hash": number.to_bytes(32),
            "from_address": b"\x04" * 20,
            "to_address": b"\x22" * 20,
            "contract_address": None,
            "tx_type": 2,
            "status": 1,
            "gas_used": 21_000,
            "cumulative_gas_used": 21_000 * (index + 1),
            "effective_gas_price": 2 * 10**9,
            "logs_bloom": b"\x00" * 256,
            "logs": [
                {"log_index": 0, "address": b"\x22" * 20, "topics": [b"\x05" * 32], "data": b"\x01"}
            ],
            "cause": CAUSE,
        }
    )


@pytest.fixture
def topics(make_topic: Callable[..., TopicSpec]) -> dict[str, TopicSpec]:
    return {
        "ordered": make_topic("lattice.blocks.BlockOrdered", partitions=1),
        "executed": make_topic("lattice.blocks.BlockExecuted", partitions=1),
        "receipts": make_topic("lattice.receipts.Receipt", partitions=3),
    }


def load(broker: EmbeddedBroker, topics: dict[str, TopicSpec], blocks: range) -> None:
    producer = Producer(broker.bootstrap)
    for number in blocks:
        raws = [signed(nonce=2 * number + i, value=number * 10 + i) for i in range(2)]
        hashes = [decode_transaction(r, RULES).hash for r in raws]
        producer.send(topics["ordered"], ordered(number, raws))
        for i, h in enumerate(hashes):
            producer.send(topics["receipts"], receipt(h, number, i), key="0x" + h.hex())
        producer.send(topics["executed"], executed(number, hashes))
    producer.close()


def sink_into(
    broker: EmbeddedBroker, topics: dict[str, TopicSpec], directory: Path
) -> AnalyticsStore:
    """Sink every record on the topics into the store in `directory`; the open store."""
    store = AnalyticsStore(directory, snapshot_every_s=0.0)
    sink = AnalyticsSink(RULES, inputs=tuple(topics.values()))
    Runtime(sink, store, broker.bootstrap).run(threading.Event(), until_caught_up=True)
    return store


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with duckdb.connect(str(path), read_only=True) as db:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}


def test_rows_land_once_and_replay_identically(
    broker: EmbeddedBroker, topics: dict[str, TopicSpec], tmp_path: Path
) -> None:
    load(broker, topics, range(1, 4))
    sink = sink_into(broker, topics, tmp_path / "live")
    sink.close()
    load(broker, topics, range(4, 6))
    again = sink_into(broker, topics, tmp_path / "live")  # a restart: only the new records
    assert again.written == 2 * (
        1 + 2 + 2 + 2 + 1 + 1
    )  # per block: executed, 2 receipts, 2 logs, ...
    view = again.db.execute(
        "SELECT count(*), sum(value), sum(receipt_gas_used), min(block_timestamp) FROM transactions"
    ).fetchone()
    assert view is not None and view[0] == 10 and view[2] == 210_000
    assert view[1] == sum(n * 10 + i for n in range(1, 6) for i in range(2))
    colours = again.db.execute(
        "SELECT colour, count(*) FROM dag_order GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert colours == [("blue", 6), ("red", 1)]  # 5 chain blocks + one merged blue, one red
    again.close()
    replayed = sink_into(broker, topics, tmp_path / "replay")
    replayed.close()
    assert dump(tmp_path / "live" / "analytics.duckdb") == dump(
        tmp_path / "replay" / "analytics.duckdb"
    )


def test_readers_use_the_snapshot_while_the_sink_writes(
    broker: EmbeddedBroker, topics: dict[str, TopicSpec], tmp_path: Path
) -> None:
    load(broker, topics, range(1, 3))
    store = AnalyticsStore(tmp_path, snapshot_every_s=0.1)
    runtime = Runtime(AnalyticsSink(RULES, inputs=tuple(topics.values())), store, broker.bootstrap)
    stop = threading.Event()
    thread = threading.Thread(target=runtime.run, args=(stop,))
    thread.start()
    try:
        snapshot = tmp_path / "snapshot.duckdb"

        def blocks() -> int:
            if not snapshot.exists():
                return 0
            with duckdb.connect(
                str(snapshot), read_only=True
            ) as reader:  # an analyst's own session
                row = reader.execute("SELECT count(*) FROM blocks").fetchone()
                return int(row[0]) if row else 0

        deadline = time.monotonic() + 30
        while blocks() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert blocks() == 2
        load(broker, topics, range(3, 5))  # the sink keeps writing; readers see it arrive
        while blocks() < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert blocks() == 4
    finally:
        stop.set()
        thread.join(30)
        store.close()


def test_snapshots_are_copied_only_when_new_and_at_most_a_twentieth_of_the_time(
    broker: EmbeddedBroker, topics: dict[str, TopicSpec], tmp_path: Path
) -> None:
    load(broker, topics, range(1, 3))
    sink = sink_into(broker, topics, tmp_path)
    try:
        snapshot = tmp_path / "snapshot.duckdb"
        first = snapshot.stat().st_ino
        sink.snapshot()  # nothing written since: the same file, not a new copy
        assert snapshot.stat().st_ino == first
        sink.snapshot_every_s = 0.01
        sink._snapshot_cost_s = 1.0  # as if the last copy took a second
        assert not sink.snapshot_due()  # the next waits for 20 s, not 0.01
        sink._last_snapshot -= 21
        assert sink.snapshot_due()
    finally:
        sink.close()


@pytest.mark.parametrize("after", [0, 2])
def test_a_crash_before_a_commit_loses_no_row_and_doubles_none(
    broker: EmbeddedBroker, topics: dict[str, TopicSpec], tmp_path: Path, after: int
) -> None:
    load(broker, topics, range(1, 5))
    reference = sink_into(broker, topics, tmp_path / "reference")
    reference.close()
    sink = AnalyticsSink(RULES, inputs=tuple(topics.values()))
    sink.pace = dataclasses.replace(sink.pace, batch=3, linger_s=0)  # commits to fall between
    crash(
        sink,
        AnalyticsStore(tmp_path / "crashed", snapshot_every_s=None),
        broker.bootstrap,
        "before-commit",
        after,
    )
    sink_into(broker, topics, tmp_path / "crashed").close()
    assert dump(tmp_path / "crashed" / "analytics.duckdb") == dump(
        tmp_path / "reference" / "analytics.duckdb"
    )
