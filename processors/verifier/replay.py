"""Replaying the verifier: rebuild every verdict and settlement from the job topics and
compare them with the live ones (`lattice verifier replay`).

A fresh verifier reads the inputs from the beginning and writes to side topics; then both
sets are read and matched per (job, node). Verdicts must be identical in every field
(outcome, each check and its detail, performance, reputation, seed, cause); settlements in
their amounts (paid, fee, refund, slashed) and parties. Settlement transaction hashes are
not compared: their nonces follow the order in which the verifier met jobs from different
partitions, which a replay need not repeat. Reputation is a function of the verdict counts,
so identical verdicts give identical reputations.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from processors.market.economics import reputation_bps
from processors.runtime import Runtime
from processors.state import MemoryStore
from processors.verifier.processor import SETTLED, VERDICTS, Verifier, side_topics
from schemas.events import JobSettled, JobVerdict
from streams.admin import ensure_topics
from streams.kafka import Reader, decodable
from streams.settings import Settings


@dataclass
class ReplayReport:
    verdicts: int = 0
    settlements: int = 0
    differences: list[str] = field(default_factory=list)
    reputation: dict[bytes, int] = field(default_factory=dict)


def _read(bootstrap: str, topic: str) -> list[Any]:
    reader = Reader(bootstrap, client_id="lattice-verifier-replay")
    try:
        positions = {(topic, p): 0 for p in reader.partitions(topic)}
        return [r.event for r in decodable(reader.read(positions), reader.codec)]
    finally:
        reader.close()


def _verdicts(records: list[JobVerdict]) -> dict[tuple[bytes, bytes], JobVerdict]:
    return {(r.job_id, r.node): r for r in records}


def _settlements(records: list[JobSettled]) -> dict[tuple[bytes, bytes], JobSettled]:
    return {(r.job_id, r.provider): r for r in records}


def replay(
    settings: Settings, bootstrap: str, settler_key: bytes, peers: list[str]
) -> ReplayReport:
    prefix = f"lattice.replay.{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, list(side_topics(prefix).values()))
    verifier = Verifier(settings, settler_key, peers, replay_into=prefix)
    runtime = Runtime(verifier, MemoryStore(), bootstrap)
    runtime.run(threading.Event(), idle_exit_s=2.0)
    report = ReplayReport()
    live_v = _verdicts(_read(bootstrap, VERDICTS.name))
    again_v = _verdicts(_read(bootstrap, f"{prefix}.verdicts"))
    report.verdicts = len(again_v)
    for key in sorted(set(live_v) | set(again_v)):
        if live_v.get(key) != again_v.get(key):
            report.differences.append(f"verdict for job 0x{key[0].hex()} node 0x{key[1].hex()}")
    amounts = ("provider", "requester", "paid_wei", "fee_wei", "refund_wei", "slashed_wei")
    live_s = _settlements(_read(bootstrap, SETTLED.name))
    again_s = _settlements(_read(bootstrap, f"{prefix}.settled"))
    report.settlements = len(again_s)
    for key in sorted(set(live_s) | set(again_s)):
        a, b = live_s.get(key), again_s.get(key)
        if a is None or b is None or any(getattr(a, f) != getattr(b, f) for f in amounts):
            report.differences.append(f"settlement for job 0x{key[0].hex()} to 0x{key[1].hex()}")
    counts: dict[bytes, list[int]] = {}
    for verdict in again_v.values():
        tally = counts.setdefault(verdict.node, [0, 0])
        tally[0] += verdict.outcome == "ACCEPTED"
        tally[1] += verdict.outcome == "REJECTED"
    report.reputation = {node: reputation_bps(a, r) for node, (a, r) in sorted(counts.items())}
    return report
