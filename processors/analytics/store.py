"""The analytics sink's state store: the DuckDB database itself.

Rows are written in batches: each batch is one DuckDB transaction holding the rows *and* the
source offsets they came from (`sink_offsets`), so a restart resumes exactly after the last
committed batch and a replay never duplicates a row (primary keys guard as well: `INSERT OR
IGNORE`, or `OR REPLACE` for latest-state tables). The sink sends nothing, so the store has
no outbox: a commit with outputs is refused.

DuckDB allows one writing process. Analysts read a snapshot instead: every few seconds the
store checkpoints and copies the database to `snapshot.duckdb` beside it (written to a
temporary name, then renamed, so a reader never sees half a file; a reader that has it open
keeps its version). `lattice sql` and any DuckDB client open the snapshot read-only while
the sink keeps writing. A copy is made only when rows were written since the last, and
never sooner than `SNAPSHOT_DUTY` times the last copy took, so copying a large database
costs the sink at most 1/SNAPSHOT_DUTY of its time (snapshots then come less often).
"""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from processors.abc import Outgoing, Partition, StateStore
from processors.analytics.tables import COMPLETE_BLOCKS, MATERIALISED, OFFSETS, TABLES, Table, ddl
from streams.kafka import Delivered

SNAPSHOT = "snapshot.duckdb"
#: The least multiple of its own duration between two snapshot copies.
SNAPSHOT_DUTY = 20
#: The sink's DuckDB memory. DuckDB keeps the pages it has touched cached up to its limit,
#: 80% of the machine's memory unless told: a sink writing a growing database grew with it
#: (2.5 MiB a minute in the soak) beside processes that need that memory. Its writes are
#: batches of rows and the incremental join over the blocks just completed; a query over
#: more than this spills to disk, as analysts' queries run on the snapshot anyway.
MEMORY_LIMIT = "256MB"


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


class AnalyticsStore(StateStore):
    def __init__(self, directory: Path, snapshot_every_s: float | None = 2.0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "analytics.duckdb"
        self.db = duckdb.connect(str(self.path), config={"memory_limit": MEMORY_LIMIT})
        for statement in ddl():
            self.db.execute(statement)
        self.snapshot_every_s = snapshot_every_s
        self.pending: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.pending_count = 0
        self.written = 0
        self._last_snapshot = 0.0
        self._snapshot_cost_s = 0.0
        self._written_at_snapshot = -1

    def add(self, table: str, row: tuple[Any, ...]) -> None:
        """A row for the next commit."""
        self.pending[table].append(row)
        self.pending_count += 1

    # -- StateStore -------------------------------------------------------------------------

    def positions(self) -> dict[Partition, int]:
        rows = self.db.execute(f'SELECT topic, partition, "offset" FROM {OFFSETS}').fetchall()
        return {(t, p): o for t, p, o in rows}

    def outbox(self) -> list[Outgoing]:
        return []

    def delivered(self) -> dict[Partition, int]:
        return {}

    def next_sequence(self) -> int:
        return 0

    def identity(self) -> str:
        return str(self.path)

    def commit(
        self,
        positions: Mapping[Partition, int],
        outgoing: Sequence[Outgoing] = (),
        acknowledged: Mapping[int, Delivered] | None = None,
    ) -> None:
        if outgoing:
            raise ValueError("the analytics store keeps rows, not outputs")
        if positions or self.pending_count:
            self._write(positions)
        self.refresh_snapshot()

    def _write(self, positions: Mapping[Partition, int]) -> None:
        db = self.db
        db.execute("BEGIN TRANSACTION")
        try:
            for name, rows in self.pending.items():
                table = TABLES[name]
                verb = "INSERT OR REPLACE" if table.replace else "INSERT OR IGNORE"
                self._insert(f"{verb} INTO {name}", columns_of(table, rows))
            self.materialise()
            if positions:
                ordered = sorted(positions.items())
                offsets = {
                    "topic": np.array([t for (t, _), _ in ordered], dtype=object),
                    "partition": np.array([p for (_, p), _ in ordered], dtype=np.int32),
                    "offset": np.array([o for _, o in ordered], dtype=np.int64),
                }
                self._insert(f"INSERT OR REPLACE INTO {OFFSETS}", offsets)
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            raise
        self.written += self.pending_count
        self.pending.clear()
        self.pending_count = 0

    def _insert(self, into: str, columns: dict[str, np.ndarray]) -> None:
        # Columns as NumPy arrays: DuckDB scans them in bulk. executemany runs one
        # statement a row, ~1.6 ms each (56 offsets took 90 ms where this takes 3.5).
        self.db.register("sink_batch", columns)
        try:
            self.db.execute(f"{into} SELECT * FROM sink_batch")
        finally:
            self.db.unregister("sink_batch")

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

    # -- snapshots for readers --------------------------------------------------------------

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

    def refresh_snapshot(self) -> None:
        """A new snapshot if one is due and the last misses rows: after every commit, and
        on the sink's ticks, so the last rows before a quiet spell reach readers too."""
        if self.snapshot_due():
            self.snapshot()

    def snapshot_due(self) -> bool:
        if self.snapshot_every_s is None:
            return False
        wait = max(self.snapshot_every_s, SNAPSHOT_DUTY * self._snapshot_cost_s)
        return time.monotonic() - self._last_snapshot > wait

    def close(self) -> None:
        if self.snapshot_every_s is not None:
            self.snapshot()
        self.db.close()
