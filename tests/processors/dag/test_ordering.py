from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from typing import Any

from processors.dag.blocks import genesis_hash
from processors.dag.ordering import DagOrderer
from schemas.events import BlockOrdered, BlockProposed, Position
from tests.processors.dag.sim import GENESIS, proposers, simulate

LOGGED = 1_800_000_000_000


def feed(blocks: list[BlockProposed], **kw: Any) -> tuple[DagOrderer, list[BlockOrdered]]:
    orderer = DagOrderer(GENESIS, **kw)
    out = []
    for n, block in enumerate(blocks):
        position = Position(topic="lattice.blocks.proposed", partition=0, offset=n)
        out.extend(orderer.accept(block, position, LOGGED))
    return orderer, out


REPLICA = """
import sys, hashlib
from schemas.codec import default_codec
from tests.processors.dag.sim import simulate
from tests.processors.dag.test_ordering import feed
_, out = feed(simulate(4, 60, seed=1), k=3, finality_depth=5)
codec = default_codec()
data = b"".join(codec.encode_event(r) for r in out)
print(len(out), hashlib.sha256(data).hexdigest())
"""


def test_replicas_in_separate_processes_emit_byte_identical_output() -> None:
    """Same input order, different hash seeds (set and dict orders): same bytes."""
    digests = set()
    for seed in ("1", "2", "3"):
        result = subprocess.run(
            [sys.executable, "-c", REPLICA],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            check=True,
        )
        digests.add(result.stdout.strip())
    assert len(digests) == 1
    count = int(next(iter(digests)).split()[0])
    assert count > 20


def test_any_delivery_order_gives_the_same_colouring_and_no_leftovers() -> None:
    blocks = simulate(4, 60, seed=1)
    shuffled = blocks[:]
    random.Random(7).shuffle(shuffled)  # parents may now arrive after their children
    a, _ = feed(blocks, k=3, finality_depth=5)
    b, _ = feed(shuffled, k=3, finality_depth=5)
    assert not a.pending and not b.pending
    for block in blocks:
        assert a.ghostdag.data[block.hash] == b.ghostdag.data[block.hash]


def test_parallel_blocks_merge_and_small_k_makes_reds() -> None:
    blocks = simulate(6, 40, seed=3)
    _, out = feed(blocks, k=1, finality_depth=4)
    assert any(len(b.parents) > 1 for b in blocks)
    assert sum(len(r.mergeset_reds) for r in out) > 0
    # Every transaction of an ordered block appears once, reds' included.
    hashes = [t.hash for r in out for t in r.transactions]
    assert len(hashes) == len(set(hashes))
    ordered_blocks = {t.dag_block for r in out for t in r.transactions}
    assert {red for r in out for red in r.mergeset_reds} <= ordered_blocks


def test_invalid_blocks_are_rejected_and_their_children_dropped() -> None:
    good = simulate(1, 3, seed=5)
    forged = dataclasses.replace(good[0], signature=bytes(65))
    orderer = DagOrderer(GENESIS, k=3, finality_depth=1)
    position = Position(topic="t", partition=0, offset=0)
    assert orderer.accept(forged, position, LOGGED) == []
    assert orderer.rejected[-1].code == "bad_signature"
    for block in good[1:]:
        orderer.accept(block, position, LOGGED)  # children of good[0] wait for it
    assert orderer.pending
    orderer.accept(good[0], position, LOGGED)
    assert not orderer.pending


def test_timestamps_ahead_of_the_log_are_rejected() -> None:
    (proposer,) = proposers(1)
    block = proposer.make_block([genesis_hash(27182)], LOGGED + 10 * 60_000, 0, [])
    orderer = DagOrderer(GENESIS)
    orderer.accept(block, Position(topic="t", partition=0, offset=0), LOGGED)
    assert orderer.rejected[-1].code == "future_timestamp"


def test_pruning_bounds_memory_and_keeps_counting() -> None:
    blocks = simulate(3, 300, seed=9)
    orderer, out = feed(blocks, k=3, finality_depth=3, prune_depth=20)
    assert len(orderer.ghostdag) < len(blocks) / 3
    assert [r.chain_index for r in out] == list(range(1, len(out) + 1))
    _, out_full = feed(blocks, k=3, finality_depth=3, prune_depth=10**9)
    assert out == out_full


def test_virtual_chain_changes_rebuild_the_chain_and_agree_with_the_final_order() -> None:
    """Applying every change in turn (drop above the fork, append the added) gives the
    selected tip's chain after every block; its final part is exactly the ordered output,
    and nothing final is ever dropped."""
    orderer = DagOrderer(GENESIS, k=3, finality_depth=10, follows_virtual=True)
    chain: list[BlockOrdered] = []  # index i - 1 holds chain index i
    final: list[BlockOrdered] = []
    reorgs = sequence = told_final_index = 0
    for n, block in enumerate(simulate(4, 80, seed=2, lag=2)):
        position = Position(topic="lattice.blocks.proposed", partition=0, offset=n)
        final.extend(orderer.accept(block, position, LOGGED))
        told_tip = len(chain)
        change = orderer.virtual_change(position)
        if change is None:
            continue
        sequence += 1
        assert change.sequence == sequence
        assert change.fork_index >= told_final_index
        if change.fork_index < told_tip:
            reorgs += 1
        del chain[change.fork_index :]
        chain.extend(change.added)
        assert [b.chain_index for b in chain] == list(range(1, len(chain) + 1))
        assert chain[-1].hash == orderer.selected_tip()
        assert change.final_index == orderer.chain_index
        assert chain[: len(final)] == final  # byte for byte what blocks.ordered carries
        assert change.final_hash == (final[-1].hash if final else GENESIS)
        assert orderer.virtual_change(position) is None  # told once
        told_final_index = change.final_index
    assert reorgs > 0, "the simulation made no reorganisation to test"
    assert len(final) > 30
