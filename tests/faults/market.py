"""The market's side of the fault harness: a user's jobs under load, and the books that
must add up after every fault.

A job counts as *acknowledged* once `POST /v1/jobs` answered 201 with its id (the gateway
answers once a node's result is on the log). After a fault:

- every acknowledged job is settled within the deadline, its settlement transactions
  executed (`lost`: not, or the job unknown);
- no job is paid more often than it was asked to run (`doubled`: more `Settled` events
  with a payment for it than its redundancy);
- JobMarket holds exactly what it owes: its balance is the sum of every deposit, every
  stake and the fees accrued, to the wei;
- since the load began, the user's deposit fell by exactly what its `Settled` events
  charged (paid + fee), and the fees grew by exactly their fees and slashes.

Every figure is read at one block number, so that settlements landing meanwhile cannot
split a comparison.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from eth_hash.auto import keccak

from processors.execution.genesis import (
    DEV_ACCOUNTS,
    DEV_WORKERS,
    JOB_MARKET,
    address_of,
    devnet_key,
)
from processors.market.chain import SETTLED, event_topic
from processors.verifier.processor import settlement_id

MODEL = "tiny-gpt2"
#: JobMarket's storage layout (contracts/src/JobMarket.sol).
DEPOSITS_SLOT, STAKES_SLOT, FEES_SLOT = 3, 5, 8
DEPOSITED = event_topic("Deposited(address,uint256)")
WITHDRAWN = event_topic("Withdrawn(address,uint256)")
#: Who may hold money in JobMarket on a devnet: its dev accounts and its worker keys.
DEPOSITORS = tuple(bytes.fromhex(a[2:]) for a in DEV_ACCOUNTS)
NODES = tuple(address_of(devnet_key("worker", i)) for i in range(DEV_WORKERS))
#: Blocks one eth_getLogs spans (under the gateway's `max_log_range`).
LOG_SPAN = 5_000


@dataclass
class JobSent:
    job_id: str
    asked: float
    at: float


@dataclass
class Jobs:
    """One user submitting small inference jobs one after another, until paused."""

    url: str
    api_key: str
    pause_s: float = 0.5
    acknowledged: dict[str, JobSent] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    def run(self, go: threading.Event, quit: threading.Event) -> None:
        client = httpx.Client(base_url=self.url, timeout=120)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        count = 0
        while not quit.is_set():
            go.wait()
            if quit.is_set():
                return
            count += 1
            prompt = {"prompt": f"job {count} of the harness", "max_tokens": 4}
            body = {"model": MODEL, "input": prompt}
            asked = time.time()
            try:
                answer = client.post("/v1/jobs", json=body, headers=headers)
            except httpx.HTTPError as exc:
                # No answer: the job may or may not be on the log; the user knows no id.
                self.errors[f"job: {type(exc).__name__}"] += 1
                time.sleep(0.2)
                continue
            if answer.status_code == 201:
                job_id = answer.json()["id"]
                self.acknowledged[job_id] = JobSent(job_id, asked, time.time())
            else:
                self.errors[f"job: {answer.status_code} {answer.text[:50]}"] += 1
            time.sleep(self.pause_s)


@dataclass(frozen=True)
class Settled:
    """A `Settled` event of JobMarket."""

    block: int
    settlement: bytes
    requester: bytes
    provider: bytes
    paid: int
    fee: int
    slashed: int


class Chain:
    """JSON-RPC reads of the devnet, all at one block when asked."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        body = [
            {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
            for i, (method, params) in enumerate(calls)
        ]
        answers = sorted(self.http.post("/", json=body).json(), key=lambda a: a["id"])
        for answer in answers:
            assert "error" not in answer, answer
        return [a["result"] for a in answers]

    def head(self) -> int:
        return int(self.batch([("eth_blockNumber", [])])[0], 16)

    def slots(self, block: int, slots: Iterable[int]) -> list[int]:
        market, at = "0x" + JOB_MARKET.hex(), hex(block)
        calls = [("eth_getStorageAt", [market, hex(s), at]) for s in slots]
        return [int(v, 16) for v in self.batch(calls)]

    def balance(self, block: int, who: bytes) -> int:
        return int(self.batch([("eth_getBalance", ["0x" + who.hex(), hex(block)])])[0], 16)

    def logs(self, topic: bytes, after: int, upto: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(after + 1, upto + 1, LOG_SPAN):
            query = {
                "address": "0x" + JOB_MARKET.hex(),
                "topics": ["0x" + topic.hex()],
                "fromBlock": hex(start),
                "toBlock": hex(min(upto, start + LOG_SPAN - 1)),
            }
            found += self.batch([("eth_getLogs", [query])])[0]
        return found

    def settled(self, after: int, upto: int) -> list[Settled]:
        out = []
        for log in self.logs(SETTLED, after, upto):
            topics = [bytes.fromhex(t[2:]) for t in log["topics"]]
            words = bytes.fromhex(log["data"][2:])
            paid, fee, _refund, slashed = (
                int.from_bytes(words[i : i + 32]) for i in range(0, 128, 32)
            )
            who = (topics[2][12:], topics[3][12:])
            out.append(Settled(int(log["blockNumber"], 16), topics[1], *who, paid, fee, slashed))
        return out

    def moved(self, topic: bytes, who: bytes, after: int, upto: int) -> int:
        """The amounts of `Deposited` or `Withdrawn` events of `who`."""
        return sum(
            int(log["data"], 16)
            for log in self.logs(topic, after, upto)
            if log["topics"][1][-40:] == who.hex()
        )


def mapping_slot(mapping: int, key: bytes) -> int:
    return int.from_bytes(keccak(key.rjust(32, b"\0") + mapping.to_bytes(32)))


@dataclass(frozen=True)
class Holdings:
    """What JobMarket holds and owes at one block."""

    block: int
    balance: int
    deposits: dict[bytes, int]
    stakes: dict[bytes, int]
    fees: int

    @classmethod
    def read(cls, chain: Chain, block: int) -> Holdings:
        keys = [mapping_slot(DEPOSITS_SLOT, a) for a in DEPOSITORS]
        keys += [mapping_slot(STAKES_SLOT, n) for n in NODES]
        values = chain.slots(block, [*keys, FEES_SLOT])
        deposits = dict(zip(DEPOSITORS, values[: len(DEPOSITORS)], strict=True))
        stakes = dict(zip(NODES, values[len(DEPOSITORS) : -1], strict=True))
        balance = chain.balance(block, JOB_MARKET)
        return cls(block, balance, deposits, stakes, values[-1])


@dataclass(frozen=True)
class JobBooks:
    lost: list[str]
    doubled: list[str]
    problems: list[str]


class MarketBooks:
    """JobMarket's holdings when the load began, and the checks against them."""

    def __init__(self, url: str, user: bytes) -> None:
        self.url, self.user = url, user
        self.chain = Chain(url)
        self.start = Holdings.read(self.chain, self.chain.head())

    def job_settled(self, job_id: str) -> bool:
        answer = self.chain.http.get(f"/v1/jobs/{job_id}")
        if answer.status_code != 200:
            return False
        job = answer.json()
        if job["state"] != "settled" or not job["settlements"]:
            return False
        hashes = [s["transaction_hash"] for s in job["settlements"]]
        receipts = self.chain.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
        return all(r is not None for r in receipts)

    def check(self, jobs: list[str], deadline: float) -> JobBooks:
        waiting = list(jobs)
        while waiting and time.monotonic() < deadline:
            waiting = [j for j in waiting if not self.job_settled(j)]
            if waiting:
                time.sleep(0.5)
        now = Holdings.read(self.chain, self.chain.head())
        events = self.chain.settled(self.start.block, now.block)
        paid: Counter[bytes] = Counter(e.settlement for e in events if e.paid > 0)
        doubled = [
            j for j in jobs if sum(paid[settlement_id(bytes.fromhex(j[2:]), n)] for n in NODES) > 1
        ]
        return JobBooks(waiting, doubled, self.problems(now, events))

    def problems(self, now: Holdings, events: list[Settled]) -> list[str]:
        found = []
        owed = sum(now.deposits.values()) + sum(now.stakes.values()) + now.fees
        if now.balance != owed:
            found.append(f"JobMarket holds {now.balance} wei, owes {owed}")
        user = self.user
        after, upto = self.start.block, now.block
        moved = self.chain.moved(DEPOSITED, user, after, upto)
        moved -= self.chain.moved(WITHDRAWN, user, after, upto)
        charged = sum(e.paid + e.fee for e in events if e.requester == user)
        expected = self.start.deposits[user] + moved - charged
        if now.deposits[user] != expected:
            found.append(f"deposit {now.deposits[user]} wei, expected {expected}")
        fees = self.start.fees + sum(e.fee + e.slashed for e in events)
        if now.fees != fees:
            found.append(f"fees {now.fees} wei, expected {fees}")
        return found
