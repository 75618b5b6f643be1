"""The analytics sink's ingest rate and lag, and analyst queries over a million transactions.

    .venv/bin/python bench/bench_analytics.py [--blocks 2000] [--txs-per-block 10] [--rows 1000000]

1. Ingest: blocks with signed transactions, their receipts (one log each) and executed
   blocks are produced to the embedded broker; the sink (`processors.analytics.processor`) reads
   them into DuckDB. Printed: rows/s and records/s once all is on the log (a backlog drained),
   and while a producer keeps writing (the lag: records on the log not yet committed to
   DuckDB, sampled every 100 ms).
2. Queries: the same schema filled with `--rows` synthetic transactions (DuckDB generates
   them: 100 per block, 50,000 senders), then typical analyst queries and the saved ones,
   each run 5 times; printed: median milliseconds. Beside each, the same query on the join
   the sink materialises (`transactions_joined`, a view): what querying without it costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from processors.analytics.processor import INPUTS, AnalyticsSink  # noqa: E402
from processors.analytics.queries import SAVED  # noqa: E402
from processors.analytics.store import AnalyticsStore  # noqa: E402
from processors.analytics.tables import ddl  # noqa: E402
from processors.execution.transactions import ChainRules, decode_transaction  # noqa: E402
from processors.runtime import Runtime  # noqa: E402
from streams.admin import ensure_topics  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.kafka import Producer, Reader  # noqa: E402
from streams.settings import CHAIN_ID  # noqa: E402
from streams.topics import topic  # noqa: E402
from tests.processors.analytics.test_sink import executed, ordered, receipt  # noqa: E402
from tests.txs import signed  # noqa: E402

RULES = ChainRules(CHAIN_ID)


def produce(bootstrap: str, blocks: range, per_block: int) -> int:
    producer = Producer(bootstrap)
    records = 0
    for number in blocks:
        raws = [signed(nonce=number * per_block + i, value=i) for i in range(per_block)]
        hashes = [decode_transaction(r, RULES).hash for r in raws]
        producer.send(topic("blocks.ordered"), ordered(number, raws))
        for i, h in enumerate(hashes):
            producer.send(topic("receipts"), receipt(h, number, i), key="0x" + h.hex())
        producer.send(topic("blocks.executed"), executed(number, hashes))
        records += 2 + per_block
    producer.close()
    return records


def log_end(bootstrap: str) -> int:
    reader = Reader(bootstrap, client_id="bench-analytics-ends")
    try:
        ends = reader.end_offsets_of([t.name for t in INPUTS])
        return sum(end for _, end in ends.values())
    finally:
        reader.close()


def ingest(blocks: int, per_block: int) -> None:
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        ensure_topics(broker.bootstrap, INPUTS)
        records = produce(broker.bootstrap, range(1, blocks + 1), per_block)
        store = AnalyticsStore(Path(tmp) / "a", snapshot_every_s=None)
        started = time.perf_counter()
        Runtime(AnalyticsSink(RULES), store, broker.bootstrap).run(
            threading.Event(), until_caught_up=True
        )
        elapsed = time.perf_counter() - started
        print(
            f"  backlog: {records} records -> {store.written} rows in {elapsed:.1f} s: "
            f"{store.written / elapsed:,.0f} rows/s, {records / elapsed:,.0f} records/s",
            flush=True,
        )
        # Under load: a producer writes while the sink follows; lag sampled from the outside.
        stop = threading.Event()
        runtime = Runtime(AnalyticsSink(RULES), store, broker.bootstrap)
        follower = threading.Thread(target=runtime.run, args=(stop,))
        follower.start()
        lags: list[int] = []
        writer = threading.Thread(
            target=produce, args=(broker.bootstrap, range(blocks + 1, 2 * blocks + 1), per_block)
        )
        writer.start()
        while writer.is_alive():
            committed = (
                store.db.cursor().execute('SELECT sum("offset" + 1) FROM sink_offsets').fetchone()
            )
            lags.append(log_end(broker.bootstrap) - int(committed[0] if committed else 0))
            time.sleep(0.1)
        writer.join()
        stop.set()
        follower.join()
        store.close()
        lags.sort()
        print(
            f"  under load ({records} records produced while sinking): lag p50 "
            f"{lags[len(lags) // 2]} records, max {lags[-1]} records",
            flush=True,
        )


SENDER = "0x" + "0" * 36 + "04d2"
QUERIES = {
    "count and sums": "SELECT count(*), sum(value), sum(receipt_gas_used) FROM transactions",
    "top senders": (
        "SELECT from_address, count(*) c FROM transactions GROUP BY 1 ORDER BY c DESC LIMIT 10"
    ),
    "one sender": f"SELECT count(*) FROM transactions WHERE from_address = '{SENDER}'",
    "one block": "SELECT * FROM transactions WHERE block_number = 5000",
    "tx by hash": (
        "SELECT * FROM transactions WHERE hash = (SELECT max(hash) FROM ordered_transactions)"
    ),
}


def queries(rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = duckdb.connect(str(Path(tmp) / "q.duckdb"))
        for statement in ddl():
            db.execute(statement)
        blocks = rows // 100
        db.execute(
            """INSERT INTO blocks SELECT i, printf('0x%064x', i), printf('0x%064x', i - 1),
               printf('0x%064x', i), '0x', '0x', '0x', 2100000, 30000000, 1000000000,
               TIMESTAMP '2026-01-01' + to_seconds(i), '0x09', 100, 0, 0, i
               FROM range(1, ?) t(i)""",
            [blocks + 1],
        )
        db.execute(
            """INSERT INTO ordered_transactions SELECT printf('0x%064x', i), i // 50000,
               printf('0x%040x', i % 50000), printf('0x%040x', (i * 7) % 1000), i % 1000000,
               21000, NULL, 2000000000, 1000000000, '0x', 2, printf('0x%064x', i // 100 + 1),
               i // 100 + 1, 0, i FROM range(?) t(i)""",
            [rows],
        )
        db.execute(
            """INSERT INTO receipts SELECT printf('0x%064x', i), i % 100, i // 100 + 1,
               printf('0x%064x', i // 100 + 1), printf('0x%040x', i % 50000),
               printf('0x%040x', (i * 7) % 1000), NULL, 1, 21000, 21000 * (i % 100 + 1),
               1500000000, 0, 0, i FROM range(?) t(i)""",
            [rows],
        )
        db.execute("INSERT INTO transactions SELECT * FROM transactions_joined")  # as the sink does
        db.execute("CHECKPOINT")
        print(f"  {rows:,} transactions in {blocks:,} blocks", flush=True)
        for label, sql in [*QUERIES.items(), *((f"saved {n}", q) for n, (_, q) in SAVED.items())]:
            times, flat = [], []
            for _ in range(5):
                started = time.perf_counter()
                db.execute(sql).fetchall()
                times.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                db.execute(sql.replace("FROM transactions", "FROM transactions_joined")).fetchall()
                flat.append((time.perf_counter() - started) * 1000)
            peer = (
                f"   (unmaterialised join {statistics.median(flat):7.1f} ms)"
                if "transactions" in sql
                else ""
            )
            print(f"  {label:<26} {statistics.median(times):7.1f} ms{peer}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=2_000)
    parser.add_argument("--txs-per-block", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    print("ingest", flush=True)
    ingest(args.blocks, args.txs_per_block)
    print("queries", flush=True)
    queries(args.rows)


if __name__ == "__main__":
    main()
