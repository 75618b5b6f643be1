"""The gateway's view of the block DAG, for the `dag_*` JSON-RPC methods.

A follower (`gateway.follow`) feeds `lattice.blocks.proposed` through the same `DagOrderer`
the DAG processor and the proposers run (one partition, so the same order and the same
state); the view answers questions about tips, blocks and the virtual selected chain under
a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from gateway.follow import Follower
from processors.abc import Output, Processor, Subscription
from processors.dag.blocks import genesis_hash
from processors.dag.ordering import DagOrderer
from processors.state import MemoryStore
from schemas.events import BlockProposed
from streams.kafka import Record
from streams.topics import topic

PROPOSED = topic("blocks.proposed")


class DagView(Processor[MemoryStore]):
    role = "gateway"
    dead_letters = False
    name = "lattice-gateway-dag-view"

    def __init__(self, bootstrap: str, chain_id: int, k: int, finality_depth: int) -> None:
        self.orderer = DagOrderer(genesis_hash(chain_id), k=k, finality_depth=finality_depth)
        self.lock = threading.Lock()
        self._follower = Follower(self, bootstrap)

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(PROPOSED),)

    def handle(self, record: Record[Any], state: MemoryStore) -> Sequence[Output]:
        if isinstance(record.event, BlockProposed):
            with self.lock:
                self.orderer.accept(record.event, record.position, record.timestamp_ms)
                self.orderer.rejected.clear()
        return ()

    def tips(self) -> list[bytes]:
        with self.lock:
            data = self.orderer.ghostdag.data
            return sorted(self.orderer.tips, key=lambda t: (data[t].blue_work, t), reverse=True)

    def virtual_chain(self, limit: int) -> list[dict[str, Any]]:
        """The selected chain from the selected tip down, newest first."""
        with self.lock:
            data = self.orderer.ghostdag.data
            final = set(self.orderer.final)
            out: list[dict[str, Any]] = []
            current: bytes | None = self.orderer.selected_tip()
            while current is not None and current in data and len(out) < limit:
                out.append(
                    {
                        "hash": current,
                        "blue_score": data[current].blue_score,
                        "final": current in final,
                    }
                )
                current = data[current].selected_parent
            return out

    def block(self, block_hash: bytes) -> dict[str, Any] | None:
        with self.lock:
            orderer = self.orderer
            data = orderer.ghostdag.data.get(block_hash)
            if data is None:
                return None
            entry = orderer.blocks.get(block_hash)
            merged_by, colour = self._colour(block_hash)
            return {
                "hash": block_hash,
                "parents": list(orderer.ghostdag.parents.get(block_hash, ())),
                "selected_parent": data.selected_parent,
                "blue_score": data.blue_score,
                "blue_work": data.blue_work,
                "mergeset_blues": list(data.mergeset_blues),
                "mergeset_reds": list(data.mergeset_reds),
                "colour": colour,
                "merged_by": merged_by,
                "proposer": entry.record.proposer if entry else None,
                "timestamp_ms": entry.record.timestamp_ms if entry else None,
                "transactions": len(entry.record.transactions) if entry else 0,
                "is_tip": block_hash in orderer.tips,
            }

    def _colour(self, block: bytes) -> tuple[bytes | None, str]:
        """Which chain block of the virtual chain merged `block`, and as what colour."""
        ghostdag = self.orderer.ghostdag
        current: bytes | None = self.orderer.selected_tip()
        while current is not None and current in ghostdag.data:
            if current == block:
                return current, "blue"  # on the selected chain
            data = ghostdag.data[current]
            if block in data.mergeset_blues:
                return current, "blue"
            if block in data.mergeset_reds:
                return current, "red"
            if data.blue_score < ghostdag.data[block].blue_score:
                break
            current = data.selected_parent
        return None, "pending"  # not merged by the virtual chain yet

    def close(self) -> None:
        self._follower.close()
