"""Choosing nodes for jobs (pure core).

Every live node is a candidate; the ones that cannot take the job are kept in the decision
with the reasons why (not enough free VRAM, price above the job's budget, no runtime for the
job kind, excluded after failing an earlier attempt, heartbeat too old). Eligible nodes get
an integer score that rewards reputation and spare VRAM and penalises price and load; ties
break on a hash of the seed and the node, never on arrival order. The seed is Keccak-256 of
the job id and the attempt number, so anyone holding the events can recompute the decision.
A seeded fraction of jobs (`redundancy_bps`) goes to the two best nodes, for redundant
execution the verifier compares.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from eth_hash.auto import keccak

from processors.market.economics import MS_PER_HOUR
from schemas.events import Candidate

STALE_AFTER_MS = 15_000  # a node silent for longer is not offered work


@dataclass(frozen=True)
class NodeView:
    address: bytes
    price_wei_per_hour: int
    vram_bytes: int  # total over the node's devices, or its RAM when it has no GPU
    vram_used_bytes: int
    reputation_bps: int
    jobs_in_flight: int
    last_seen_ms: int
    runtimes: tuple[str, ...]
    peak_gflops: int
    stake_wei: int  # on the ledger (`JobMarket.stakes`)
    leaving: bool  # asked to unstake (`lattice worker unstake`)


@dataclass(frozen=True)
class JobNeeds:
    job_id: bytes
    kind: str  # INFERENCE | TRAINING
    required_vram_bytes: int
    max_price_wei: int
    deadline_ms: int


@dataclass(frozen=True)
class Decision:
    seed: bytes
    nodes: tuple[bytes, ...]  # empty: nobody can take the job now
    redundant: bool
    candidates: tuple[Candidate, ...]


def seed_of(job_id: bytes, attempt: int) -> bytes:
    return keccak(job_id + attempt.to_bytes(4))


def _runtime_for(kind: str) -> str:
    return "torch" if kind == "TRAINING" else "onnxruntime"


def assess(job: JobNeeds, node: NodeView, now_ms: int, excluded: frozenset[bytes]) -> Candidate:
    free = max(0, node.vram_bytes - node.vram_used_bytes)
    reasons = []
    if node.address in excluded:
        reasons.append("failed an earlier attempt of this job")
    if node.leaving:
        reasons.append("leaving the network (stake being withdrawn)")
    elif node.stake_wei == 0:
        reasons.append("no stake on the ledger")
    if now_ms - node.last_seen_ms > STALE_AFTER_MS:
        reasons.append(f"silent for {now_ms - node.last_seen_ms} ms")
    if free < job.required_vram_bytes:
        reasons.append(f"free VRAM {free} < required {job.required_vram_bytes}")
    if not any(r.startswith(_runtime_for(job.kind)) for r in node.runtimes):
        reasons.append(f"no {_runtime_for(job.kind)} runtime")
    # A node charging more per second than the job's whole budget cannot finish in budget.
    if node.price_wei_per_hour * 1_000 // MS_PER_HOUR > job.max_price_wei:
        reasons.append("price per second above the job's maximum price")
    score = (
        node.reputation_bps * 100
        + min(free >> 20, 80_000)  # MiB of headroom, capped so a huge node cannot dominate
        - node.jobs_in_flight * 20_000
        - min(node.price_wei_per_hour * 100_000 // max(job.max_price_wei * 3_600, 1), 200_000)
    )
    return Candidate(
        node=node.address,
        eligible=not reasons,
        score=score if not reasons else 0,
        price_wei_per_hour=node.price_wei_per_hour,
        free_vram_bytes=free,
        reputation_bps=node.reputation_bps,
        load=node.jobs_in_flight,
        reasons=tuple(reasons),
    )


def decide(
    job: JobNeeds,
    nodes: Iterable[NodeView],
    now_ms: int,
    attempt: int = 0,
    excluded: frozenset[bytes] = frozenset(),
    redundancy_bps: int = 0,
    force_redundant: bool = False,
) -> Decision:
    """`force_redundant`: the requester asked (and pays) for two nodes."""
    seed = seed_of(job.job_id, attempt)
    candidates = tuple(
        sorted(
            (assess(job, n, now_ms, excluded) for n in nodes),
            key=lambda c: (not c.eligible, -c.score, keccak(seed + c.node)),
        )
    )
    eligible = [c.node for c in candidates if c.eligible]
    drawn = int.from_bytes(keccak(seed + b"redundant")[:4]) % 10_000 < redundancy_bps
    redundant = len(eligible) >= 2 and (drawn or force_redundant)
    chosen = tuple(eligible[: 2 if redundant else 1])
    return Decision(seed=seed, nodes=chosen, redundant=redundant, candidates=candidates)
