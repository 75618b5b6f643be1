from __future__ import annotations

import dataclasses

from processors.market.matching import JobNeeds, NodeView, decide, seed_of

GIB = 1 << 30
NOW = 1_000_000


def node(n: int, **changes: object) -> NodeView:
    base = NodeView(
        address=bytes([n]) * 20,
        price_wei_per_hour=3_600_000,
        vram_bytes=16 * GIB,
        vram_used_bytes=0,
        reputation_bps=5_000,
        jobs_in_flight=0,
        last_seen_ms=NOW,
        runtimes=("onnxruntime-cpu", "torch-cpu"),
        peak_gflops=100,
        stake_wei=2 * 10**18,
        leaving=False,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


JOB = JobNeeds(b"\x07" * 32, "INFERENCE", 8 * GIB, 10**12, NOW + 60_000)


def test_ineligible_nodes_are_kept_with_their_reasons() -> None:
    nodes = [
        node(1, vram_bytes=4 * GIB),
        node(2, last_seen_ms=NOW - 60_000),
        node(3, runtimes=("torch-cpu",)),
        node(4, price_wei_per_hour=10**20),
        node(5),
        node(6, leaving=True),
        node(7, stake_wei=0),
    ]
    decision = decide(JOB, nodes, NOW)
    assert decision.nodes == (node(5).address,)
    reasons = {c.node[0]: c.reasons for c in decision.candidates}
    assert "free VRAM" in reasons[1][0]
    assert "silent" in reasons[2][0]
    assert "no onnxruntime runtime" in reasons[3]
    assert "price" in reasons[4][0]
    assert reasons[5] == ()
    assert reasons[6] == ("leaving the network (stake being withdrawn)",)
    assert reasons[7] == ("no stake on the ledger",)


def test_reputation_load_and_exclusion_steer_the_choice() -> None:
    good, busy = node(1, reputation_bps=9_000), node(2, jobs_in_flight=3)
    assert decide(JOB, [busy, good], NOW).nodes == (good.address,)
    assert decide(JOB, [busy, good], NOW, excluded=frozenset({good.address})).nodes == (
        busy.address,
    )


def test_decisions_are_reproducible_and_order_free() -> None:
    nodes = [node(i) for i in range(1, 9)]
    a = decide(JOB, nodes, NOW, attempt=2, redundancy_bps=5_000)
    b = decide(JOB, list(reversed(nodes)), NOW, attempt=2, redundancy_bps=5_000)
    assert a == b and a.seed == seed_of(JOB.job_id, 2)


def test_a_seeded_share_of_jobs_runs_twice() -> None:
    nodes = [node(1), node(2)]
    jobs = [dataclasses.replace(JOB, job_id=i.to_bytes(32)) for i in range(400)]
    redundant = [decide(j, nodes, NOW, redundancy_bps=2_500) for j in jobs]
    share = sum(d.redundant for d in redundant) / len(jobs)
    assert 0.15 < share < 0.35
    assert all(len(d.nodes) == (2 if d.redundant else 1) for d in redundant)
    assert not any(d.redundant for d in (decide(j, nodes, NOW) for j in jobs))
