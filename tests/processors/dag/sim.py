"""Simulated proposers producing a real signed DAG (for tests of the ordering logic)."""

from __future__ import annotations

import random

from coincurve import PrivateKey
from eth_hash.auto import keccak

from processors.dag.blocks import Proposer, genesis_hash
from schemas.events import BlockProposed

GENESIS = genesis_hash(27182)


def proposers(n: int) -> list[Proposer]:
    return [Proposer(PrivateKey(keccak(b"test proposer %d" % i))) for i in range(n)]


def simulate(
    n_proposers: int, rounds: int, seed: int, lag: int = 1, txs_per_block: int = 1
) -> list[BlockProposed]:
    """Blocks in creation order. Each proposer sees others' blocks `lag` rounds late, so
    blocks are made in parallel and merged later."""
    rng = random.Random(seed)
    made: list[tuple[int, int, BlockProposed]] = []  # (round, proposer, block)
    seq = [0] * n_proposers
    keys = proposers(n_proposers)
    for r in range(rounds):
        for i, p in enumerate(keys):
            if rng.random() < 0.3:
                continue
            seen = [b for (rr, j, b) in made if j == i or rr <= r - lag]
            known = {b.hash for b in seen} | {GENESIS}
            referenced = {parent for b in seen for parent in b.parents}
            tips = sorted(known - referenced) or [GENESIS]
            txs = [keccak(b"tx %d %d %d" % (r, i, t)) + b"\x01" for t in range(txs_per_block)]
            block = p.make_block(tips, 1_700_000_000_000 + r * 1000 + i, seq[i], txs)
            seq[i] += 1
            made.append((r, i, block))
    return [b for _, _, b in made]
