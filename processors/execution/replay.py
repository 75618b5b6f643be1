"""`lattice replay`: rebuild the ledger from the log alone and check it against the live one.

Reads `lattice.blocks.ordered` from the beginning, executes every block with a fresh `Ledger`
on a fresh rocksdict store in the target directory (committed per block, like the processor),
prints each block's state root, and compares it with the one the live execution processor
published on `lattice.blocks.executed`. Any difference is reported and fails the command:
replaying the topics must rebuild the state bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from processors.execution.db import overlay_chain_db
from processors.execution.genesis import Genesis
from processors.execution.ledger import Ledger
from processors.execution.processor import EVM_PREFIX, EXECUTED, ORDERED
from processors.execution.transactions import ChainRules
from processors.state import ProcessorState
from streams.kafka import Reader


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
        live = {
            reader.decode(m).value["number"]: reader.decode(m).value["state_root"]
            for m in reader.read({(EXECUTED.name, 0): 0})
        }
        ordered = [reader.decode(m).value for m in reader.read({(ORDERED.name, 0): 0})]
    finally:
        reader.close()
    state = ProcessorState(target)
    try:
        db, overlay = overlay_chain_db(lambda key: state.get(EVM_PREFIX + key))
        ledger = Ledger(db, genesis, rules)
        mismatches = []
        head = ledger.head.state_root
        for offset, block in enumerate(ordered):
            header = ledger.execute(block).header
            changes = overlay.take_changes()
            state.commit(
                {(ORDERED.name, 0): offset},
                {EVM_PREFIX + k: v for k, v in changes.items() if v is not None},
                deletes=[EVM_PREFIX + k for k, v in changes.items() if v is None],
            )
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
