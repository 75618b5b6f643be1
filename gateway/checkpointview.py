"""The gateway's view of the replicas' checkpoints: what `finalized` means, and divergence.

A follower (`gateway.follow`) of `lattice.checkpoints`: it counts each known replica's
signed (block hash, state root) per height, and reports the highest height a majority
agrees on. Replicas disagreeing on a height is logged as an error once per height and shown
by `lattice_status`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from gateway.follow import Follower
from processors.abc import Output, Processor, Subscription
from processors.execution.checkpoints import Checkpoints
from processors.state import MemoryStore
from schemas.events import Checkpoint
from streams.kafka import Record
from streams.topics import topic

log = logging.getLogger(__name__)
CHECKPOINTS = topic("checkpoints")


class CheckpointView(Processor[MemoryStore]):
    role = "gateway"
    dead_letters = False
    name = "lattice-gateway-checkpoints"

    def __init__(self, bootstrap: str, signers: frozenset[bytes]) -> None:
        """`signers`: the addresses whose checkpoints count (the network's nodes, or the
        devnet's replicas); a majority of them finalises a height."""
        self.checkpoints = Checkpoints(signers)
        self.lock = threading.Lock()
        self._reported: set[int] = set()
        self._follower = Follower(self, bootstrap)

    def subscriptions(self) -> Sequence[Subscription]:
        return (Subscription(CHECKPOINTS),)

    def handle(self, record: Record[Any], state: MemoryStore) -> Sequence[Output]:
        if isinstance(record.event, Checkpoint):
            self.count(record.event)
        return ()

    def count(self, checkpoint: Checkpoint) -> None:
        with self.lock:
            if not self.checkpoints.add(checkpoint):
                log.warning(
                    "ignoring a checkpoint with a bad or unknown signer at height %d",
                    checkpoint.height,
                )
                return
            for divergence in self.checkpoints.divergences():
                if divergence["height"] not in self._reported:
                    self._reported.add(divergence["height"])
                    log.error(
                        "REPLICA DIVERGENCE at height %d: %s",
                        divergence["height"],
                        divergence["votes"],
                    )

    def finalized(self) -> int:
        with self.lock:
            return self.checkpoints.finalized()

    def agreed_from(
        self, low: int, without: bytes | None = None
    ) -> list[tuple[int, tuple[bytes, bytes]]]:
        with self.lock:
            return self.checkpoints.agreed(low, without)

    def status(self) -> dict[str, Any]:
        with self.lock:
            c = self.checkpoints
            return {
                "replicas": len(c.signers),
                "quorum": c.quorum,
                "finalized": c.finalized(),
                "divergences": c.divergences(),
                "rejectedCheckpoints": c.rejected,
                "signers": sorted("0x" + s.hex() for s in c.signers),
            }

    def close(self) -> None:
        self._follower.close()
