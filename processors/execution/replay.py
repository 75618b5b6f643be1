"""`lattice replay`: rebuild the ledger from the log alone and check it against the live one.

Reads the final chain, `lattice.blocks.ordered`, from the beginning and executes every block
with a fresh, non-publishing `ExecutionProcessor` (the live processor's own `apply`, each
block a change of a chain that only grows and is final at once) on a fresh store in the
target directory, committed per block as the runtime would; prints each block's state root
and compares it with the one the live execution processor published on
`lattice.blocks.executed`. Any difference is reported and fails the command: replaying the
topics must rebuild the state bit for bit. The live processor followed the virtual chain,
reorganisations and all: a replay of the final chain alone must come to the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processors.execution.genesis import Genesis
from processors.execution.processor import (
    EXECUTED,
    ORDERED,
    ExecutionProcessor,
    final_changes,
)
from processors.execution.transactions import ChainRules
from processors.state import RocksStore
from schemas.events import BlockExecuted, BlockOrdered
from streams.kafka import Reader, Record, decodable


@dataclass(frozen=True)
class ReplayReport:
    blocks: int
    mismatches: tuple[int, ...]
    unpublished: int
    head_root: bytes


def replay(
    bootstrap: str,
    target: Path,
    genesis: Genesis,
    rules: ChainRules,
    report: Callable[[int, bytes, bytes | None], None] | None = None,
) -> ReplayReport:
    if (target / "rocksdb").exists():
        raise FileExistsError(f"{target} already holds a store; replay into a fresh directory")
    reader = Reader(bootstrap, client_id="lattice-replay")
    try:
        live = {}
        # What does not decode is skipped, as the live processors skipped it.
        for record in decodable(reader.read({(EXECUTED.name, 0): 0}), reader.codec):
            executed = record.event
            assert isinstance(executed, BlockExecuted)
            live[executed.number] = executed.state_root
        ordered: list[Record[Any]] = list(
            decodable(reader.read({(ORDERED.name, 0): 0}), reader.codec)
        )
    finally:
        reader.close()
    state = RocksStore(target)
    try:
        processor = ExecutionProcessor(genesis, rules, name="lattice-replay", publish=False)
        processor.restore(state)
        state.commit({})
        mismatches = []
        head = processor.ledger.head.state_root
        blocks = [record.event for record in ordered if isinstance(record.event, BlockOrdered)]
        for record, change in zip(ordered, final_changes(blocks), strict=True):
            processor.apply(change, record.position, state)
            state.commit({(ORDERED.name, 0): record.offset})
            header = processor.ledger.head
            published = live.get(header.block_number)
            if published is not None and published != header.state_root:
                mismatches.append(header.block_number)
            if report is not None:
                report(header.block_number, header.state_root, published)
            head = header.state_root
        unpublished = sum(1 for n in range(1, len(ordered) + 1) if n not in live)
        return ReplayReport(len(ordered), tuple(mismatches), unpublished, head)
    finally:
        state.close()
