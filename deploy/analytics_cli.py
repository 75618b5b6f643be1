"""Analytics commands.

    lattice analytics run [--dir DIR]          the sink (the devnet runs one)
    lattice analytics replay TARGET_DIR         rebuild the database from the topics
    lattice sql "QUERY" [--format table|json|csv] [--db FILE]
    lattice sql --saved NAME | --list-saved

`lattice sql` opens the sink's published snapshot (`<data-dir>/analytics/snapshot.duckdb`)
read-only, so it runs beside a writing sink; writes are refused.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import decimal
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from streams.settings import Settings

#: The sink's CPU priority below the node's other processes (`nice`): it is the one
#: process whose lag nobody waits on (it batches what piles up, and analysts read a
#: snapshot), and on a busy host its share went to the ledger's and the market's waits
#: (bench_market on 2 cores: a third of a core during one-at-a-time requests).
NICENESS = 10


class SqlError(RuntimeError):
    """A query that cannot run, with DuckDB's reason."""


def add_commands(sub: argparse._SubParsersAction, common: Any) -> None:  # type: ignore[type-arg]
    analytics = sub.add_parser("analytics", help="the DuckDB analytics sink")
    action = analytics.add_subparsers(dest="analytics_command", required=True, metavar="ACTION")
    run = action.add_parser("run", help="sink the topics into DuckDB")
    common(run)
    run.add_argument("--dir", type=Path, help="database directory (default DATA_DIR/analytics)")
    replay = action.add_parser("replay", help="rebuild the database from the topics")
    common(replay)
    replay.add_argument("target", type=Path, help="a new, empty directory")

    sql = sub.add_parser("sql", help="query the analytics database (read-only)")
    common(sql)
    sql.add_argument("query", nargs="?", help="SQL to run")
    sql.add_argument("--saved", metavar="NAME", help="run a saved query (see --list-saved)")
    sql.add_argument("--list-saved", action="store_true", help="list the saved queries")
    sql.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sql.add_argument("--db", type=Path, help="a database file (default: the sink's snapshot)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, int) and abs(value) >= 2**53:
        return str(value)  # JSON numbers lose precision beyond 2^53 in most readers
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def run_sql(db: Path, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    import duckdb

    if not db.exists():
        raise SqlError(f"no analytics database at {db} (is the devnet's sink running?)")
    try:
        connection = duckdb.connect(str(db), read_only=True)
    except duckdb.Error as exc:
        raise SqlError(f"cannot open {db}: {exc}") from None
    try:
        cursor = connection.execute(query)
        if cursor.description is None:
            return [], []
        return [d[0] for d in cursor.description], cursor.fetchall()
    except duckdb.Error as exc:
        message = str(exc)
        if "read-only" in message or "read only" in message:
            raise SqlError(f"lattice sql is read-only: {message}") from None
        raise SqlError(message) from None
    finally:
        connection.close()


def render(columns: list[str], rows: list[tuple[Any, ...]], fmt: str, out: TextIO) -> None:
    if fmt == "json":
        for row in rows:
            print(
                json.dumps({c: _jsonable(v) for c, v in zip(columns, row, strict=True)}), file=out
            )
        return
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows([_jsonable(v) for v in row] for row in rows)
        return
    cells: list[list[str]] = [columns]
    cells += [["NULL" if v is None else str(_jsonable(v)) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for index, line in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), file=out)
        if index == 0:
            print("  ".join("-" * w for w in widths), file=out)
    print(f"({len(rows)} rows)", file=out)


def cmd_sql(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from processors.analytics.queries import SAVED
    from processors.analytics.store import SNAPSHOT

    if args.list_saved:
        for name, (about, _) in SAVED.items():
            print(f"{name:<18} {about}", file=out)
        return 0
    if args.saved:
        if args.saved not in SAVED:
            print(
                f"lattice: error: no saved query {args.saved!r}; see --list-saved", file=sys.stderr
            )
            return 2
        query = SAVED[args.saved][1]
    elif args.query:
        query = args.query
    else:
        print("lattice: error: give a QUERY, --saved NAME or --list-saved", file=sys.stderr)
        return 2
    db = args.db or Path(settings.data_dir) / "analytics" / SNAPSHOT
    try:
        columns, rows = run_sql(db, query)
    except SqlError as exc:
        print(f"lattice: error: {exc}", file=sys.stderr)
        return 1
    render(columns, rows, args.format, out)
    return 0


def cmd_run(settings: Settings, args: argparse.Namespace, bootstrap: str) -> int:
    from processors.analytics.processor import AnalyticsSink
    from processors.analytics.store import AnalyticsStore
    from processors.execution.transactions import ChainRules
    from processors.runtime import Runtime, configure_logging, stop_on_signals

    configure_logging(settings.log_level, settings.metrics_port)
    stop = stop_on_signals()
    os.nice(NICENESS)
    rules = ChainRules(settings.chain_id, settings.max_tx_bytes, settings.block_gas_limit)
    directory = args.dir or Path(settings.data_dir) / "analytics"
    store = AnalyticsStore(directory)
    print(
        f"analytics sink: {store.path} (snapshot for readers: {directory}/snapshot.duckdb)",
        flush=True,
    )
    try:
        Runtime(AnalyticsSink(rules), store, bootstrap, kafka_config=settings.kafka_config).run(
            stop
        )
    finally:
        store.close()
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace, bootstrap: str, out: TextIO) -> int:
    from processors.analytics.processor import AnalyticsSink
    from processors.analytics.store import AnalyticsStore
    from processors.analytics.tables import TABLES
    from processors.execution.transactions import ChainRules
    from processors.runtime import Runtime

    if args.target.exists() and any(args.target.iterdir()):
        print(f"lattice: error: {args.target} is not empty", file=sys.stderr)
        return 2
    rules = ChainRules(settings.chain_id, settings.max_tx_bytes, settings.block_gas_limit)
    store = AnalyticsStore(args.target, snapshot_every_s=None)
    sink = AnalyticsSink(rules, name="lattice-analytics-replay")
    try:
        Runtime(sink, store, bootstrap).run(threading.Event(), until_caught_up=True)
        for name in TABLES:
            count = store.db.execute(f"SELECT count(*) FROM {name}").fetchone()
            print(f"{name:<22} {count[0] if count else 0}", file=out)
    finally:
        store.close()
    print(f"replayed into {args.target / 'analytics.duckdb'}", file=out)
    return 0


def run(settings: Settings, args: argparse.Namespace, bootstrap_of: Any, out: TextIO) -> int | None:
    if args.command == "sql":
        return cmd_sql(settings, args, out)
    if args.command == "analytics":
        if args.analytics_command == "run":
            return cmd_run(settings, args, bootstrap_of(settings))
        return cmd_replay(settings, args, bootstrap_of(settings), out)
    return None
