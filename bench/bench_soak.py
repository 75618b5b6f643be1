"""The soak: a devnet with workers under a steady mixed load for half an hour, one line of
figures a minute, and a verdict on whether anything grows.

    .venv/bin/python bench/bench_soak.py [--minutes 30] [--warmup 1] [--block-interval 1]
        [--tx-rate 20] [--read-rate 10] [--job-every 10] [--workers 2] [--model DIR]
        [--data-dir DIR] [--out soak.jsonl]

Starts `lattice devnet --workers 2`, imports a model (the tiny GPT-2 the tests build
locally unless `--model` names a Hugging Face causal-LM directory; nothing is downloaded),
deploys an ERC-20 (LatticeToken) and gives it to the senders, then runs the load for
`--minutes`, the first `--warmup` of them left out of the verdict:

- sends: `--tx-rate` transactions a second over eight dev accounts (2-9), each alternating
  an ETH transfer and an ERC-20 transfer, to recipients drawn from a fixed pool (so that
  the state stops growing after the first laps: memory that keeps growing is the node's,
  not more accounts). `ack` is eth_sendRawTransaction's answer, `eth`/`erc20` the receipt
  (polled in JSON-RPC batches every 0.1 s, so they read up to 0.1 s high);
- calls: `--read-rate` eth_call a second (the token's balanceOf, a holder from the pool);
- jobs: one inference job every `--job-every` seconds (`POST /v1/jobs` with the devnet's
  API key, which answers once a worker's result is on the log: `job`), then polled at
  `GET /v1/jobs/{id}` until its settlement is listed (`settled`).

The load is open-loop: every operation has a due time on a fixed schedule and its latency
is counted from that time, not from when the client got round to it, so a node that falls
behind shows rising latencies and a backlog (`late`: operations due and not yet sent;
`waits`: transactions awaiting their receipt and jobs outstanding) instead of a client
that quietly slows down with it.

Every minute one JSON line goes to `--out` and a row to the terminal: p50/p99 latency (ms)
of each kind in that minute (an operation counts in the minute it completed), counts and
errors; each process's resident memory (MiB; the devnet's children as `lattice_status`
lists them, the broker (tansu), the devnet itself, which serves the gateway, and this
client), each with its own helpers' memory added; consumer lag per Kafka client (the
`lattice_consumer_lag_records` gauges every process serves at /metrics, summed over
partitions, sampled every 5 s: the mean and max of the minute); child restarts; the
machine's load average.

At the end a summary table: each series after warmup, its first and last value, mean,
least-squares slope per minute and growth over the run (slope x minutes, as % of the
mean), and a verdict: GROWING when that growth is over 10% of the mean *and* the second
half's mean is over 10% above the first half's, else FLAT. Both conditions: noise makes a
slope, a leak makes both. Growth under a noise floor (10 records of lag or operations of
backlog, 2 MiB, 5 ms) is FLAT whatever its percentages: lag going from 0.1 to 0.3 records
is +200% and nothing. Watch the broker: the embedded tansu keeps the log in memory, so
its resident memory grows with the records written unless something trims it. Nothing is
asserted and the exit status is 0: the figures are the result (docs/reliability.md, Soak).
Wall-clock figures from this machine; compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
from eth_abi.abi import encode
from eth_account import Account
from eth_hash.auto import keccak
from eth_utils.address import to_checksum_address
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_rpc import signed

from contracts.build import load
from processors.execution.genesis import DEV_KEYS
from tests.devnets import Devnet, rpc
from tests.faults.harness import command_of, cpu_seconds, descendants

#: Senders: dev accounts 2-9 (0 is the devnet's own, for its API key; 1 imports the
#: model and deploys the token, before the load).
SENDERS = tuple(range(2, 10))
DEPLOYER = 1
#: Recipients and token holders cycle over this many addresses.
POOL = 256
RECEIPT_POLL_S = 0.1
#: A transaction without a receipt after this long counts as an error (and is dropped).
RECEIPT_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 120.0
#: Jobs outstanding at once; a job due beyond that is not sent (an error: `skipped`).
MAX_JOBS_IN_FLIGHT = 4
LAG_SAMPLE_S = 5.0
MODEL_NAME = "tiny-gpt2"
#: Gas of an ERC-20 transfer or funding call (an ETH transfer takes bench_rpc's 21,000).
CALL_GAS = 80_000
PROMPT = "the quick brown fox"
#: Latency kinds, in the order the table shows them.
KINDS = ("ack", "eth", "erc20", "call", "job", "settled")
TRANSFER = keccak(b"transfer(address,uint256)")[:4]
BALANCE_OF = keccak(b"balanceOf(address)")[:4]


def address_at(base: int, index: int) -> str:
    return to_checksum_address((base << 140 | index % POOL).to_bytes(20, "big"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Recorder:
    """What completed in the current minute; `roll` hands it over and starts the next."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._fresh()

    def _fresh(self) -> None:
        self.latencies: dict[str, list[float]] = {k: [] for k in KINDS}
        self.errors: Counter[str] = Counter()
        self.lag: dict[str, list[float]] = {}

    def latency(self, kind: str, since: float) -> None:
        with self.lock:
            self.latencies[kind].append((time.monotonic() - since) * 1000)

    def error(self, kind: str, why: str) -> None:
        with self.lock:
            self.errors[f"{kind}: {why[:80]}"] += 1

    def lags(self, per_client: dict[str, float]) -> None:
        with self.lock:
            for client, lag in per_client.items():
                self.lag.setdefault(client, []).append(lag)

    def roll(self) -> tuple[dict[str, list[float]], Counter[str], dict[str, list[float]]]:
        with self.lock:
            taken = self.latencies, self.errors, self.lag
            self._fresh()
            return taken


class Rpc:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def call(self, method: str, *params: Any) -> Any:
        answer = self.http.post(
            "/", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        ).json()
        if "error" in answer:
            raise RuntimeError(str(answer["error"].get("message", answer["error"])))
        return answer["result"]

    def receipts(self, hashes: list[str]) -> list[Any]:
        body = [
            {"jsonrpc": "2.0", "id": i, "method": "eth_getTransactionReceipt", "params": [h]}
            for i, h in enumerate(hashes)
        ]
        answers = sorted(self.http.post("/", json=body).json(), key=lambda a: a["id"])
        return [a.get("result") for a in answers]


def wait_receipts(client: Rpc, hashes: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    pending = list(hashes)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} set-up receipts missing")
        found = client.receipts(pending)
        for receipt in found:
            if receipt is not None and receipt["status"] != "0x1":
                raise RuntimeError(f"set-up transaction reverted: {receipt}")
        pending = [h for h, r in zip(pending, found, strict=True) if r is None]
        time.sleep(0.2)


def deploy_token(url: str, chain_id: int) -> str:
    """LatticeToken from the deployer, and tokens for every sender."""
    client = Rpc(url)
    key = DEV_KEYS[DEPLOYER]
    nonce = int(
        client.call("eth_getTransactionCount", Account.from_key(key).address, "pending"), 16
    )
    token = load("LatticeToken")
    ctor = encode(["string", "string", "uint256"], ["Lattice", "LAT", 10**27])
    tx = {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "data": bytes.fromhex(token["bytecode"][2:]) + ctor,
        "gas": 2_000_000,
        "maxFeePerGas": 10**11,
        "maxPriorityFeePerGas": 10**9,
    }
    raw = "0x" + bytes(Account.sign_transaction(tx, key).raw_transaction).hex()
    deployed = client.call("eth_sendRawTransaction", raw)
    wait_receipts(client, [deployed])
    address = to_checksum_address(
        client.call("eth_getTransactionReceipt", deployed)["contractAddress"]
    )
    hashes = []
    for i, sender in enumerate(SENDERS, start=1):
        holder = Account.from_key(DEV_KEYS[sender]).address
        data = TRANSFER + encode(["address", "uint256"], [holder, 10**24])
        hashes.append(
            client.call(
                "eth_sendRawTransaction",
                signed(chain_id, key, nonce + i, address, 0, data, CALL_GAS),
            )
        )
    wait_receipts(client, hashes)
    return address


@dataclass
class Load:
    """The schedule's threads, and what they have outstanding."""

    url: str
    chain_id: int
    token: str
    recorder: Recorder
    tx_rate: float
    read_rate: float
    job_every: float
    api_key: str
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Acknowledged transactions waiting for a receipt: hash -> (due time, kind).
    pending: dict[str, tuple[float, str]] = field(default_factory=dict)
    #: Per schedule: the due time of its next operation and its period (for the backlog).
    due: dict[str, tuple[float, float]] = field(default_factory=dict)
    jobs_in_flight: int = 0
    #: When the schedule starts (time.monotonic()).
    started: float = 0.0
    threads: list[threading.Thread] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)

    def start(self) -> None:
        self.started = time.monotonic() + 0.5
        targets: list[tuple[Any, tuple[Any, ...]]] = [
            (self._sender, (i, sender)) for i, sender in enumerate(SENDERS)
        ]
        targets += [(self._receipts, ()), (self._reader, ()), (self._jobs, ())]
        for target, args in targets:
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def backlog(self) -> dict[str, int]:
        """`late`: operations due and not yet sent (the client or the node behind);
        `receipts` and `jobs`: sent and not yet answered."""
        now = time.monotonic()
        with self.lock:
            late = sum(max(0, int((now - due) / period)) for due, period in self.due.values())
            return {"late": late, "receipts": len(self.pending), "jobs": self.jobs_in_flight}

    def _schedule(
        self, name: str, period: float, offset: float = 0.0
    ) -> Iterator[tuple[int, float]]:
        """Due times, every `period` from the start; waits for each (none when late)."""
        i = 0
        while not self.stop.is_set():
            due = self.started + offset + i * period
            with self.lock:
                self.due[name] = (due, period)
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            yield i, due
            i += 1

    def _sender(self, index: int, account: int) -> None:
        client = Rpc(self.url)
        key = DEV_KEYS[account]
        address = Account.from_key(key).address
        nonce = int(client.call("eth_getTransactionCount", address, "pending"), 16)
        period = len(SENDERS) / self.tx_rate
        # Senders staggered across the period, so that sends arrive evenly.
        for i, due in self._schedule(f"sender {account}", period, period * index / len(SENDERS)):
            kind = "eth" if (i + index) % 2 == 0 else "erc20"
            to = address_at(0x5EED, i)
            if kind == "eth":
                raw = signed(self.chain_id, key, nonce, to, value=1)
            else:
                data = TRANSFER + encode(["address", "uint256"], [to, 1])
                raw = signed(self.chain_id, key, nonce, self.token, data=data, gas=CALL_GAS)
            try:
                tx_hash = client.call("eth_sendRawTransaction", raw)
            except (httpx.HTTPError, ValueError, RuntimeError) as exc:
                self.recorder.error("send", str(exc) or type(exc).__name__)
                # The nonce may or may not have been taken: ask the node.
                with contextlib.suppress(httpx.HTTPError, ValueError, RuntimeError):
                    nonce = int(client.call("eth_getTransactionCount", address, "pending"), 16)
                continue
            self.recorder.latency("ack", due)
            with self.lock:
                self.pending[tx_hash] = (due, kind)
                self.sent[kind] += 1
            nonce += 1

    def _receipts(self) -> None:
        client = Rpc(self.url)
        while not self.stop.wait(RECEIPT_POLL_S):
            with self.lock:
                waiting = list(self.pending.items())
            for start in range(0, len(waiting), 100):
                chunk = waiting[start : start + 100]
                try:
                    found = client.receipts([h for h, _ in chunk])
                except (httpx.HTTPError, ValueError) as exc:
                    self.recorder.error("receipt", str(exc) or type(exc).__name__)
                    continue
                now = time.monotonic()
                for (tx_hash, (due, kind)), receipt in zip(chunk, found, strict=True):
                    if receipt is None and now - due < RECEIPT_TIMEOUT_S:
                        continue
                    with self.lock:
                        del self.pending[tx_hash]
                    if receipt is None:
                        self.recorder.error(kind, f"no receipt in {RECEIPT_TIMEOUT_S:.0f} s")
                    elif receipt["status"] != "0x1":
                        self.recorder.error(kind, "reverted")
                    else:
                        self.recorder.latency(kind, due)

    def _reader(self) -> None:
        client = Rpc(self.url)
        for i, due in self._schedule("reader", 1 / self.read_rate):
            data = BALANCE_OF + encode(["address"], [address_at(0x5EED, i)])
            try:
                client.call("eth_call", {"to": self.token, "data": "0x" + data.hex()}, "latest")
            except (httpx.HTTPError, ValueError, RuntimeError) as exc:
                self.recorder.error("call", str(exc) or type(exc).__name__)
                continue
            self.recorder.latency("call", due)

    def _jobs(self) -> None:
        for _, due in self._schedule("jobs", self.job_every):
            with self.lock:
                if self.jobs_in_flight >= MAX_JOBS_IN_FLIGHT:
                    self.recorder.error("job", f"skipped: {self.jobs_in_flight} in flight")
                    continue
                self.jobs_in_flight += 1
            threading.Thread(target=self._job, args=(due,), daemon=True).start()

    def _job(self, due: float) -> None:
        try:
            self._run_job(due)
        finally:
            with self.lock:
                self.jobs_in_flight -= 1

    def _run_job(self, due: float) -> None:
        http = httpx.Client(base_url=self.url, timeout=120)
        body = {"model": MODEL_NAME, "input": {"prompt": PROMPT, "max_tokens": 6}}
        try:
            answer = http.post(
                "/v1/jobs", json=body, headers={"Authorization": f"Bearer {self.api_key}"}
            )
        except httpx.HTTPError as exc:
            self.recorder.error("job", str(exc) or type(exc).__name__)
            return
        if answer.status_code != 201:
            self.recorder.error("job", f"HTTP {answer.status_code} {answer.text[:60]}")
            return
        self.recorder.latency("job", due)
        job_id = answer.json()["id"]
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while not self.stop.wait(0.5):
            try:
                if http.get(f"/v1/jobs/{job_id}").json().get("settlements"):
                    self.recorder.latency("settled", due)
                    return
            except (httpx.HTTPError, ValueError) as exc:
                self.recorder.error("settled", str(exc) or type(exc).__name__)
                return
            if time.monotonic() > deadline:
                self.recorder.error("settled", f"no settlement in {SETTLE_TIMEOUT_S:.0f} s")
                return


def own_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass  # exited between the listing and the read
    return 0


def own_cpu_s(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0  # exited between the listing and the read


def processes(net: Devnet, status: dict[str, Any]) -> dict[str, list[int]]:
    """Pids by process name: the devnet itself (it serves the gateway), the broker, each
    child `lattice_status` lists (with its own descendants), anything else under the
    devnet, and this client."""
    assert net.process is not None
    parent = net.process.pid
    children = {p["name"]: p["pid"] for p in status.get("processes", []) if p["pid"]}
    for pid in descendants(parent):
        if "tansu" in command_of(pid):
            children["broker"] = pid
    found = {"devnet (gateway)": [parent]}
    found.update({name: [pid, *descendants(pid)] for name, pid in children.items()})
    counted = {p for pids in found.values() for p in pids}
    stray = [p for p in descendants(parent) if p not in counted]
    if stray:  # a child starting or exiting between the status and the listing
        found["other"] = stray
    found["client"] = [os.getpid()]
    return found


class CpuMeter:
    """Each process's CPU use over the last minute, as % of one core: a process whose
    work per operation grows with the log or the chain shows here first."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}

    def sample(self, found: dict[str, list[int]]) -> dict[str, float]:
        now = time.monotonic()
        shares = {}
        for name, pids in found.items():
            used = sum(own_cpu_s(p) for p in pids)
            before = self._last.get(name)
            self._last[name] = (now, used)
            if before is not None and now > before[0] and used >= before[1]:
                shares[name] = round(100 * (used - before[1]) / (now - before[0]), 1)
        return shares


def memory(found: dict[str, list[int]]) -> dict[str, float]:
    """Resident MiB by process name (a child's helpers are its memory)."""
    return {name: round(sum(map(own_rss_kib, pids)) / 1024, 1) for name, pids in found.items()}


def consumer_lag(metrics: dict[str, str], http: httpx.Client) -> dict[str, float]:
    """Each Kafka client's lag, summed over its partitions, from every process's /metrics."""
    lag: dict[str, float] = {}
    for url in metrics.values():
        try:
            text = http.get(url).text
        except httpx.HTTPError:
            continue  # a child restarting: its figure is missing from this sample
        for family in text_string_to_metric_families(text):
            if family.name != "lattice_consumer_lag_records":
                continue
            for sample in family.samples:
                client = sample.labels["client"]
                lag[client] = lag.get(client, 0.0) + sample.value
    return lag


def sample_lag(load: Load, metrics: dict[str, str]) -> None:
    http = httpx.Client(timeout=5)
    while not load.stop.wait(LAG_SAMPLE_S):
        load.recorder.lags(consumer_lag(metrics, http))


def minute_record(
    minute: int,
    net: Devnet,
    load: Load,
    taken: tuple[dict[str, list[float]], Counter[str], dict[str, list[float]]],
    cpu: CpuMeter,
) -> dict[str, Any]:
    latencies, errors, lags = taken
    status = rpc(net.url, "lattice_status")
    record: dict[str, Any] = {"minute": minute, "at": round(time.time(), 1)}
    record["latency_ms"] = {
        kind: (
            {
                "p50": round(percentile(values, 0.5), 1),
                "p99": round(percentile(values, 0.99), 1),
                "count": len(values),
            }
            if values
            else {"p50": None, "p99": None, "count": 0}
        )
        for kind, values in latencies.items()
    }
    record["errors"] = dict(errors)
    record["backlog"] = load.backlog()
    found = processes(net, status)
    record["rss_mib"] = memory(found)
    record["cpu_pct"] = cpu.sample(found)
    record["lag"] = {
        client: {"mean": round(statistics.fmean(v), 1), "max": max(v)}
        for client, v in sorted(lags.items())
    }
    record["restarts"] = {p["name"]: p["restarts"] for p in status.get("processes", [])}
    record["head"] = int(status["head"], 16) if status.get("head") else None
    record["load_average"] = round(os.getloadavg()[0], 2)
    return record


def fmt(value: float | None, width: int = 7) -> str:
    return f"{value:>{width}.0f}" if value is not None else f"{'-':>{width}}"


HEADER = (
    f"{'min':>3} {'sent':>5} {'err':>4} "
    + " ".join(f"{k + ' p50':>10} {'p99':>6}" for k in KINDS)
    + f" {'lag':>5} {'late':>4} {'waits':>5} {'RSS MiB':>7} {'broker':>6} {'load':>5}"
)


def row(record: dict[str, Any]) -> str:
    latency = record["latency_ms"]
    cells = " ".join(f"{fmt(latency[k]['p50'], 10)} {fmt(latency[k]['p99'], 6)}" for k in KINDS)
    lag = sum(v["mean"] for v in record["lag"].values())
    backlog = record["backlog"]
    return (
        f"{record['minute']:>3} {latency['ack']['count']:>5} {sum(record['errors'].values()):>4} "
        f"{cells} {lag:>5.0f} {backlog['late']:>4} {backlog['receipts'] + backlog['jobs']:>5} "
        f"{sum(record['rss_mib'].values()):>7.0f} {record['rss_mib'].get('broker', 0):>6.0f} "
        f"{record['load_average']:>5.2f}"
    )


def series(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Every figure that should stay flat, as (minute, value) points."""
    out: dict[str, list[tuple[int, float]]] = {}

    def add(name: str, minute: int, value: float | None) -> None:
        if value is not None:
            out.setdefault(name, []).append((minute, float(value)))

    for r in records:
        m = r["minute"]
        for kind in KINDS:
            for q in ("p50", "p99"):
                add(f"{kind} {q} ms", m, r["latency_ms"][kind][q])
        add("sends/min", m, r["latency_ms"]["ack"]["count"])
        for name, mib in r["rss_mib"].items():
            add(f"RSS {name} MiB", m, mib)
        add("RSS total MiB", m, sum(r["rss_mib"].values()))
        for name, share in r.get("cpu_pct", {}).items():
            add(f"CPU {name} %", m, share)
        for client, lag in r["lag"].items():
            add(f"lag {client}", m, lag["mean"])
        for what, count in r["backlog"].items():
            add(f"backlog {what}", m, count)
        add("load average", m, r["load_average"])
    return out


@dataclass(frozen=True)
class Verdict:
    name: str
    first: float
    last: float
    mean: float
    slope: float
    growth_pct: float
    halves_pct: float
    verdict: str


def noise_floor(name: str) -> float:
    """Growth over the run below which a series is FLAT whatever its percentages: a lag
    of 0.1 records going to 0.3 is +200% and nothing."""
    if name.startswith(("lag ", "backlog")):
        return 10.0  # records, operations
    if name.endswith(" MiB"):
        return 2.0
    if name.endswith(" ms"):
        return 5.0
    if name.endswith(" %"):
        return 5.0  # % of a core
    return 0.0


def judge(name: str, points: list[tuple[int, float]]) -> Verdict | None:
    """Least-squares slope over the points; GROWING only if the fitted growth over the run
    and the second half's rise over the first both pass 10% of the mean."""
    if len(points) < 2:
        return None
    xs, ys = [float(p[0]) for p in points], [p[1] for p in points]
    mean = statistics.fmean(ys)
    slope = statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else 0.0
    growth = slope * (xs[-1] - xs[0])
    half = len(ys) // 2
    first, second = statistics.fmean(ys[:half]), statistics.fmean(ys[len(ys) - half :])
    growth_pct = 100 * growth / mean if mean else 0.0
    halves_pct = 100 * (second - first) / first if first else (100.0 if second > 0 else 0.0)
    growing = mean > 0 and growth_pct > 10 and halves_pct > 10 and growth > noise_floor(name)
    return Verdict(
        name, ys[0], ys[-1], mean, slope, growth_pct, halves_pct, "GROWING" if growing else "FLAT"
    )


def summary(records: list[dict[str, Any]], warmup: int) -> str:
    judged = [
        v
        for name, points in series([r for r in records if r["minute"] > warmup]).items()
        if (v := judge(name, points)) is not None
    ]
    head = (
        f"{'series':<34} {'first':>8} {'last':>8} {'mean':>8} {'slope/min':>9} "
        f"{'growth %':>8} {'halves %':>8}  verdict"
    )
    lines = [head, "-" * len(head)]
    for v in judged:
        lines.append(
            f"{v.name[:34]:<34} {v.first:>8.1f} {v.last:>8.1f} {v.mean:>8.1f} {v.slope:>9.2f} "
            f"{v.growth_pct:>8.1f} {v.halves_pct:>8.1f}  {v.verdict}"
        )
    growing = [v.name for v in judged if v.verdict == "GROWING"]
    lines.append("")
    lines.append(
        f"{len(judged)} series over minutes {warmup + 1}-{records[-1]['minute']}: "
        + (f"GROWING: {', '.join(growing)}" if growing else "all FLAT")
    )
    return "\n".join(lines)


def build_model(tmp: Path) -> Path:
    from tests.tiny_models import build_tiny_gpt2

    return build_tiny_gpt2(tmp / "tiny-gpt2")


def set_up(net: Devnet, model: Path, workers: int) -> str:
    """Model imported, workers listed, the dev API key; returns the key."""
    net.wait_set_up(180)
    imported = net.cli(
        *("model", "import", str(model), "--name", MODEL_NAME, "--dev-account", str(DEPLOYER)),
        timeout=300,
    )
    if imported.returncode != 0:
        raise RuntimeError(f"model import failed: {imported.stderr[-2000:]}")
    deadline = time.monotonic() + 180
    while len(httpx.get(f"{net.url}/v1/nodes").json()["nodes"]) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {workers} workers listed (see {net.data_dir}/logs)")
        time.sleep(0.5)
    return (net.data_dir / "api-key").read_text().strip()


def warm_up_workers(url: str, key: str, workers: int) -> None:
    """A few jobs before the clock starts: a worker loads the model on its first job."""
    for _ in range(2 * workers):
        httpx.post(
            f"{url}/v1/jobs",
            json={"model": MODEL_NAME, "input": {"prompt": PROMPT, "max_tokens": 6}},
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        )


def soak(args: argparse.Namespace, data_dir: Path, model: Path, out: TextIO) -> None:
    extra = ["--block-interval", str(args.block_interval), "--workers", str(args.workers)]
    if args.finality_depth is not None:
        extra += ["--finality-depth", str(args.finality_depth)]
    net = Devnet(data_dir, *extra)
    print(f"devnet: {data_dir} (log {net.log})", flush=True)
    net.start()
    try:
        key = set_up(net, model, args.workers)
        chain_id = int(rpc(net.url, "eth_chainId"), 16)
        token = deploy_token(net.url, chain_id)
        warm_up_workers(net.url, key, args.workers)
        metrics = json.loads((data_dir / "devnet.json").read_text())["metrics"]
        recorder = Recorder()
        load = Load(
            net.url, chain_id, token, recorder, args.tx_rate, args.read_rate, args.job_every, key
        )
        print(
            f"load: {args.tx_rate:g} tx/s (ETH and ERC-20), {args.read_rate:g} eth_call/s, "
            f"a job every {args.job_every:g} s; {args.minutes} minutes "
            f"(the first {args.warmup} left out of the verdict); latencies in ms\n",
            flush=True,
        )
        print(HEADER, flush=True)
        load.start()
        lag_thread = threading.Thread(target=sample_lag, args=(load, metrics), daemon=True)
        lag_thread.start()
        records = []
        cpu = CpuMeter()
        cpu.sample(processes(net, rpc(net.url, "lattice_status")))
        try:
            for minute in range(1, args.minutes + 1):
                time.sleep(max(0.0, load.started + 60 * minute - time.monotonic()))
                record = minute_record(minute, net, load, recorder.roll(), cpu)
                records.append(record)
                out.write(json.dumps(record) + "\n")
                out.flush()
                print(row(record), flush=True)
                if record["errors"]:
                    print(f"    errors: {record['errors']}", flush=True)
        finally:
            load.close()
            lag_thread.join(10)
        print(f"\nsent: {dict(load.sent)}\n", flush=True)
        print(summary(records, args.warmup), flush=True)
    finally:
        net.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=1, help="minutes left out of the verdict")
    parser.add_argument("--block-interval", type=float, default=1.0)
    parser.add_argument("--finality-depth", type=int, help="default: the devnet's")
    parser.add_argument("--tx-rate", type=float, default=20.0, help="transactions a second")
    parser.add_argument("--read-rate", type=float, default=10.0, help="eth_call a second")
    parser.add_argument("--job-every", type=float, default=10.0, help="seconds between jobs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a Hugging Face causal-LM directory")
    parser.add_argument("--data-dir", type=Path, help="default: a temporary directory")
    parser.add_argument("--out", type=Path, default=Path("soak.jsonl"), help="one line a minute")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, args.out.open("w") as out:
        model = args.model or build_model(Path(tmp))
        data_dir = args.data_dir or Path(tmp) / "data"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        soak(args, data_dir, model, out)
    print(f"\nper-minute figures in {args.out}")


if __name__ == "__main__":
    main()
