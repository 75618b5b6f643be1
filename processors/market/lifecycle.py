"""A job's lifecycle as its events tell it (pure fold), shared by the matcher, the verifier
and the gateway.

A job's records are spread over five topics (submitted, assigned, results, verdicts,
settled), all keyed by the job id but read side by side, so they arrive in no set order:
an assignment can come before its submission. `Job.apply` takes them in any order and
keeps every one, in arrival order; what each reader needs is derived from them here, once:

- `attempt`, `nodes`, `lease_expires_ms`: from the latest assignment (the highest attempt;
  the first record of an attempt counts, a later one with the same attempt is ignored);
- `expired`: an assignment with no nodes (the matcher's expiry);
- `answered`: the nodes with a result; `closed`: expired, or every node of the latest
  assignment answered;
- `excluded`: nodes of an assignment that never answered (not offered the job again);
- `settled_for`, `charged`: the providers settled and what the job cost so far (the first
  settlement of each provider counts: a settlement id is paid once on the ledger);
- `runs`: how many answers the job pays for (two when an attempt ran redundantly, else
  one);
- `state`: submitted, assigned, completed, verified, settled or expired, for users.

Which records count is the caller's to decide before applying: the matcher applies only
results their node signed, the gateway all of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from schemas.events import JobAssigned, JobResult, JobSettled, JobSubmitted, JobVerdict, Position
from schemas.record import Event

JobEvent = JobSubmitted | JobAssigned | JobResult | JobVerdict | JobSettled
State = Literal["submitted", "assigned", "completed", "verified", "settled", "expired"]


@dataclass(frozen=True)
class Job:
    job_id: bytes
    submitted: JobSubmitted | None = None
    #: Where the submission is on the log: the cause of the matcher's assignments.
    submitted_at: Position | None = None
    assignments: tuple[JobAssigned, ...] = ()
    results: tuple[JobResult, ...] = ()
    verdicts: tuple[JobVerdict, ...] = ()
    settlements: tuple[JobSettled, ...] = ()

    def apply(self, event: Event, position: Position | None = None) -> Job:
        """This job with one more of its records (itself for a record it already counts)."""
        if isinstance(event, JobSubmitted):
            if self.submitted is not None:
                return self
            return dataclasses.replace(self, submitted=event, submitted_at=position)
        if isinstance(event, JobAssigned):
            return dataclasses.replace(self, assignments=(*self.assignments, event))
        if isinstance(event, JobResult):
            return dataclasses.replace(self, results=(*self.results, event))
        if isinstance(event, JobVerdict):
            return dataclasses.replace(self, verdicts=(*self.verdicts, event))
        if isinstance(event, JobSettled):
            return dataclasses.replace(self, settlements=(*self.settlements, event))
        return self

    # -- assignments ------------------------------------------------------------------------

    def assignment(self, attempt: int) -> JobAssigned | None:
        """The assignment of an attempt (the first record of it)."""
        return next((a for a in self.assignments if a.attempt == attempt), None)

    @property
    def latest(self) -> JobAssigned | None:
        if not self.assignments:
            return None
        top = max(a.attempt for a in self.assignments)
        return self.assignment(top)

    @property
    def attempt(self) -> int:
        """The latest assignment's attempt; -1 before the first."""
        latest = self.latest
        return latest.attempt if latest is not None else -1

    @property
    def nodes(self) -> tuple[bytes, ...]:
        latest = self.latest
        return latest.nodes if latest is not None else ()

    @property
    def lease_expires_ms(self) -> int:
        latest = self.latest
        return latest.lease_expires_ms if latest is not None else 0

    @property
    def expired(self) -> bool:
        return any(not a.nodes for a in self.assignments)

    @property
    def expiry(self) -> JobAssigned | None:
        return next((a for a in self.assignments if not a.nodes), None)

    @property
    def answered(self) -> frozenset[bytes]:
        return frozenset(r.node for r in self.results)

    @property
    def closed(self) -> bool:
        answered = self.answered
        return self.expired or (bool(self.nodes) and all(n in answered for n in self.nodes))

    @property
    def excluded(self) -> frozenset[bytes]:
        """Nodes given an attempt that never answered."""
        answered = self.answered
        return frozenset(n for a in self.assignments for n in a.nodes if n not in answered)

    # -- verdicts and money -----------------------------------------------------------------

    def verdict_of(self, node: bytes) -> JobVerdict | None:
        return next((v for v in self.verdicts if v.node == node), None)

    def _first_settlements(self) -> list[JobSettled]:
        seen: set[bytes] = set()
        first = []
        for settled in self.settlements:
            if settled.provider not in seen:
                seen.add(settled.provider)
                first.append(settled)
        return first

    @property
    def settled_for(self) -> frozenset[bytes]:
        """Providers settled (the zero address for a refund of an expired job)."""
        return frozenset(s.provider for s in self.settlements)

    @property
    def runs(self) -> int:
        """Answers the job pays for: two when an attempt of it ran redundantly, else one (a
        job reassigned after its lease ran out still wants one answer)."""
        firsts = (self.assignment(a.attempt) for a in self.assignments)
        return 2 if any(a is not None and a.redundant for a in firsts) else 1

    @property
    def charged(self) -> int:
        """What the job cost its requester so far: paid plus fees."""
        return sum(s.paid_wei + s.fee_wei for s in self._first_settlements())

    @property
    def state(self) -> State:
        if self.settlements:
            return "settled"
        if self.verdicts:
            return "verified"
        if self.results:
            return "completed"
        latest = self.latest
        if latest is not None and not latest.nodes:
            return "expired"
        return "assigned" if self.assignments else "submitted"
