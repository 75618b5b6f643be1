"""The analytics sink: the ledger's and the market's topics into DuckDB.

Records are decoded, turned into rows (`processors.analytics.rows`) and written in batches:
each batch is one DuckDB transaction holding the rows *and* the source offsets they came
from (`sink_offsets`), so a restart resumes exactly after the last committed batch and a
replay never duplicates a row (primary keys guard as well: `INSERT OR IGNORE`, or `OR
REPLACE` for latest-state tables).

DuckDB allows one writing process. Analysts read a snapshot instead: every few seconds the
sink checkpoints and copies the database to `snapshot.duckdb` beside it (written to a
temporary name, then renamed, so a reader never sees half a file; a reader that has it open
keeps its version). `lattice sql` and any DuckDB client open the snapshot read-only while
the sink keeps writing. A copy is made only when rows were written since the last, and
never sooner than `SNAPSHOT_DUTY` times the last copy took, so copying a large database
costs the sink at most 1/SNAPSHOT_DUTY of its time (snapshots then come less often).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from processors.analytics.rows import converters
from processors.analytics.tables import (
    COMPLETE_BLOCKS,
    MATERIALISED,
    OFFSETS,
    TABLES,
    Table,
    ddl,
)
from processors.execution.transactions import ChainRules
from schemas.codec import CodecError
from streams.kafka import CatchUp, Reader
from streams.metrics import EVENTS
from streams.topics import TopicSpec, topic

log = logging.getLogger(__name__)

INPUTS = tuple(
    topic(name)
    for name in (
        "blocks.proposed",
        "blocks.ordered",
        "blocks.executed",
        "receipts",
        "tx.rejected",
        "state.accounts",
        "gpu.nodes",
        "gpu.heartbeats",
        "models",
        "jobs.submitted",
        "jobs.assigned",
        "jobs.results",
        "jobs.verdicts",
        "jobs.settled",
    )
)
SNAPSHOT = "snapshot.duckdb"
#: The least multiple of its own duration between two snapshot copies.
SNAPSHOT_DUTY = 20


def columns_of(table: Table, rows: list[tuple[Any, ...]]) -> dict[str, np.ndarray]:
    """Rows as one 1-D object array per column; wide integers travel as text (DuckDB
    casts them to UHUGEINT on insert) so no value is squeezed through a 64-bit type."""
    out = {}
    for index, (name, kind) in enumerate(table.typed):
        column = np.empty(len(rows), dtype=object)
        wide = kind.startswith("UHUGEINT")
        for position, row in enumerate(rows):
            value = row[index]
            column[position] = str(value) if wide and value is not None else value
        out[name] = column
    return out


class AnalyticsSink:
    def __init__(
        self,
        bootstrap: str,
        directory: Path,
        rules: ChainRules,
        *,
        batch_rows: int = 20_000,
        flush_every_s: float = 0.5,
        snapshot_every_s: float | None = 2.0,
        client_id: str = "lattice-analytics",
        inputs: tuple[TopicSpec, ...] = INPUTS,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "analytics.duckdb"
        self.db = duckdb.connect(str(self.path))
        for statement in ddl():
            self.db.execute(statement)
        self.bootstrap = bootstrap
        self.rows = converters(rules)
        self.batch_rows = batch_rows
        self.flush_every_s = flush_every_s
        self.snapshot_every_s = snapshot_every_s
        self.client_id = client_id
        self.inputs = inputs
        self.pending: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.pending_offsets: dict[tuple[str, int], int] = {}
        self.pending_count = 0
        self.written = 0
        self._last_flush = time.monotonic()
        self._last_snapshot = 0.0
        self._snapshot_cost_s = 0.0
        self._written_at_snapshot = -1

    def positions(self, reader: Reader) -> dict[tuple[str, int], int]:
        done = {
            (t, p): o
            for t, p, o in self.db.execute(
                f'SELECT topic, partition, "offset" FROM {OFFSETS}'
            ).fetchall()
        }
        return {
            (spec.name, p): done.get((spec.name, p), -1) + 1
            for spec in self.inputs
            for p in reader.partitions(spec.name)
        }

    def add(
        self, schema: str, record: dict[str, Any], topic_name: str, partition: int, offset: int
    ) -> None:
        convert = self.rows.get(schema)
        if convert is not None:
            for table, row in convert(record):
                self.pending[table].append((*row, partition, offset))
                self.pending_count += 1
        self.pending_offsets[(topic_name, partition)] = offset
        EVENTS.labels("analytics", topic_name, "in").inc()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self.pending_offsets:
            return
        db = self.db
        db.execute("BEGIN TRANSACTION")
        try:
            for name, rows in self.pending.items():
                table = TABLES[name]
                verb = "INSERT OR REPLACE" if table.replace else "INSERT OR IGNORE"
                # Columns as NumPy object arrays: DuckDB scans them in bulk (executemany
                # inserts row by row, two orders of magnitude slower).
                db.register("sink_batch", columns_of(table, rows))
                db.execute(f"{verb} INTO {name} SELECT * FROM sink_batch")
                db.unregister("sink_batch")
            self.materialise()
            db.executemany(
                f"INSERT OR REPLACE INTO {OFFSETS} VALUES (?, ?, ?)",
                [(t, p, o) for (t, p), o in sorted(self.pending_offsets.items())],
            )
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            raise
        self.written += self.pending_count
        self.pending.clear()
        self.pending_offsets.clear()
        self.pending_count = 0

    def materialise(self) -> None:
        """Extend `transactions` over the blocks now complete, in block order."""
        row = self.db.execute(
            f"SELECT through FROM {MATERIALISED} WHERE name = 'transactions'"
        ).fetchone()
        through = int(row[0]) if row else 0
        reached = through
        for number, complete in self.db.execute(COMPLETE_BLOCKS, [through]).fetchall():
            if number != reached + 1 or not complete:
                break
            reached = number
        if reached > through:
            self.db.execute(
                "INSERT INTO transactions SELECT * FROM transactions_joined "
                "WHERE block_number > ? AND block_number <= ?",
                [through, reached],
            )
            self.db.execute(
                f"INSERT OR REPLACE INTO {MATERIALISED} VALUES ('transactions', ?)", [reached]
            )

    def snapshot(self) -> Path:
        """Publish a consistent read-only copy for analysts (unless the last one is still
        current); its path."""
        target = self.directory / SNAPSHOT
        if self.written == self._written_at_snapshot and target.exists():
            return target
        started = time.monotonic()
        self.db.execute("CHECKPOINT")
        tmp = self.directory / f".{SNAPSHOT}.{os.getpid()}"
        shutil.copyfile(self.path, tmp)
        os.replace(tmp, target)
        self._last_snapshot = time.monotonic()
        self._snapshot_cost_s = self._last_snapshot - started
        self._written_at_snapshot = self.written
        return target

    def snapshot_due(self) -> bool:
        if self.snapshot_every_s is None:
            return False
        wait = max(self.snapshot_every_s, SNAPSHOT_DUTY * self._snapshot_cost_s)
        return time.monotonic() - self._last_snapshot > wait

    def run(self, stop: threading.Event, until_caught_up: bool = False) -> None:
        """Sink until `stop`; with `until_caught_up`, return once every partition's end is
        written (a replay into an empty database)."""
        reader = Reader(self.bootstrap, client_id=self.client_id, config={"fetch.wait.max.ms": 50})
        try:
            positions = self.positions(reader)
            catch_up = CatchUp(reader, positions)
            reader.assign(positions)
            while not stop.is_set():
                for message in reader.poll_batch(5_000, 0.2):
                    key = (message.topic(), message.partition())
                    catch_up.saw(message)
                    if message.error() is not None:
                        continue
                    try:
                        decoded = reader.codec.decode(message.value())
                    except CodecError as exc:
                        log.warning("%s: skipping an undecodable record: %s", key, exc)
                        self.pending_offsets[key] = message.offset()
                        continue
                    self.add(decoded.name, decoded.record, key[0], key[1], message.offset())
                due = time.monotonic() - self._last_flush > self.flush_every_s
                caught_up = until_caught_up and catch_up.done
                if self.pending_count >= self.batch_rows or due or caught_up:
                    self.flush()
                    if self.snapshot_due():
                        self.snapshot()
                if caught_up and not self.pending_offsets:
                    return
        finally:
            self.flush()
            if self.snapshot_every_s is not None:
                self.snapshot()
            reader.close()

    def close(self) -> None:
        self.db.close()
