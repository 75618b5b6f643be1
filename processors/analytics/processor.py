"""The analytics sink: the ledger's and the market's topics into DuckDB.

Records are decoded by the runtime, turned into rows (`processors.analytics.rows`, a pure
function of one record and its position) and handed to the store, which writes them with
the offsets they came from in one DuckDB transaction (`processors.analytics.store`). The
runtime lets records gather for up to `Pace.linger_s` or `Pace.batch` records between two
commits: DuckDB inserts in bulk far faster than row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from processors.abc import Output, Pace, Processor, Subscription
from processors.analytics.rows import converters
from processors.analytics.store import AnalyticsStore
from processors.execution.transactions import ChainRules
from streams.kafka import Record
from streams.topics import TopicSpec, topic

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


class AnalyticsSink(Processor[AnalyticsStore]):
    role = "analytics"
    # Ticks refresh the analysts' snapshot after a quiet spell (commits refresh it too,
    # but the last one before the quiet may have come before a snapshot was due).
    pace = Pace(
        batch=20_000,
        linger_s=0.5,
        poll_s=0.2,
        tick_s=0.5,
        # Nobody waits on the sink (its rows reach analysts with the next snapshot), and
        # each waiting fetch costs the broker CPU.
        read_config={"fetch.wait.max.ms": 500},
    )
    # Its store keeps rows and no outbox: what it skips is logged and counted only (the
    # processors that act on those topics send their dead letters).
    dead_letters = False

    def __init__(
        self,
        rules: ChainRules,
        *,
        name: str = "lattice-analytics",
        inputs: tuple[TopicSpec, ...] = INPUTS,
    ) -> None:
        self.name = name
        self.rows = converters(rules)
        self.inputs = inputs

    def subscriptions(self) -> Sequence[Subscription]:
        return [Subscription(spec) for spec in self.inputs]

    def handle(self, record: Record[Any], state: AnalyticsStore) -> Sequence[Output]:
        convert = self.rows.get(record.event.SCHEMA)
        if convert is not None:
            for table, row in convert(record.event):
                state.add(table, (*row, record.partition, record.offset))
        return ()

    def tick(self, now_ms: int, state: AnalyticsStore) -> Sequence[Output]:
        state.refresh_snapshot()
        return ()
