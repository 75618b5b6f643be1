"""The JSON-RPC client workload against `lattice devnet`, anvil and Hardhat, side by side.

    .venv/bin/python bench/bench_rpc.py [--transfers 1000] [--calls 2000]
        [--against REF --repeat N] [--no-peers]

One Python client (httpx, keep-alive) runs the same script on each node: pre-signed ETH
transfers sent with eth_sendRawTransaction until every receipt is in, first one request at
a time, then from ten wallets at once (one connection and one thread each, every wallet
sending its next transaction as soon as the last was accepted, as ten busy users would),
then from four submitting threads (each with its share of the wallets), then as
JSON-RPC batches holding one transaction of each wallet (as a relayer would); the
same for ERC-20 transfers (LatticeToken); submit-to-receipt latency of single transfers;
eth_call latency (balanceOf), the same call repeated (Lattice answers a call it ran on the
same block from memory) and a different holder each time (run every time); eth_estimateGas
of an ERC-20 transfer to a new address; and eth_getBalance throughput. Receipts are polled
with JSON-RPC batches of 100. anvil is foundry's and Hardhat 3 is `hardhat node`, both from
npm (`node_modules/.bin/`, installed by `make`), on loopback. The devnet runs with 0.25 s
blocks and finality depth 3 unless `--blocks` says. The execution processor alone is measured by
`bench/bench_execution.py`.
`--against REF` also runs the devnet of another commit (a git worktree of it, with the
same virtual environment), `--repeat N` times each, in turn with this tree's, and prints
the means side by side: how a change moved the figures, on one machine in one run.
Figures are printed with the ratios lattice / each other column; nothing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from eth_abi import encode
from eth_account import Account
from eth_hash.auto import keccak
from web3 import Web3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cpu import cpu_by_process, report_cpu

from contracts.build import load
from processors.execution.genesis import DEV_KEYS
from streams.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
ANVIL = ROOT / "node_modules" / ".bin" / "anvil"
HARDHAT = ROOT / "node_modules" / ".bin" / "hardhat"
#: The development mnemonic's first ten accounts: funded alike by all three nodes.
KEYS = list(DEV_KEYS)
#: Receipts asked for per JSON-RPC batch while waiting.
RECEIPT_BATCH = 100
#: Threads of the "four submitting threads" workload (issue 15's client script).
SUBMITTERS = 4
#: Transfers timed one by one from submission to receipt.
LATENCY_SAMPLES = 40
#: Seconds the node is watched idle before the workload (a devnet's background CPU).
IDLE_S = 3.0


class Client:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.ids = 0

    def call(self, method: str, *params: Any) -> Any:
        self.ids += 1
        answer = self.http.post(
            "/", json={"jsonrpc": "2.0", "id": self.ids, "method": method, "params": list(params)}
        ).json()
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    def batch(self, method: str, params: list[list[Any]]) -> list[Any]:
        body = [
            {"jsonrpc": "2.0", "id": i, "method": method, "params": p} for i, p in enumerate(params)
        ]
        answers = sorted(self.http.post("/", json=body).json(), key=lambda a: a["id"])
        for answer in answers:
            if "error" in answer:
                raise RuntimeError(f"{method}: {answer['error']}")
        return [a["result"] for a in answers]


def signed(
    chain_id: int,
    key: str,
    nonce: int,
    to: str,
    value: int = 0,
    data: bytes = b"",
    gas: int = 21_000,
) -> str:
    tx = {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "to": to,
        "value": value,
        "data": data,
        "gas": gas,
        "maxFeePerGas": 10**11,
        "maxPriorityFeePerGas": 10**9,
    }
    return "0x" + bytes(Account.sign_transaction(tx, key).raw_transaction).hex()


def until_receipts(client: Client, hashes: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    pending = list(hashes)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} receipts missing")
        missing = []
        for i in range(0, len(pending), RECEIPT_BATCH):
            chunk = pending[i : i + RECEIPT_BATCH]
            found = client.batch("eth_getTransactionReceipt", [[h] for h in chunk])
            missing += [h for h, receipt in zip(chunk, found, strict=True) if receipt is None]
        pending = missing
        if pending:
            time.sleep(0.02)


def send_from_wallets(url: str, wallets: list[list[str]]) -> list[str]:
    """Each wallet's transactions in order on its own connection, all wallets at once."""
    hashes: list[list[str]] = [[] for _ in wallets]
    failures: list[BaseException] = []

    def send(index: int) -> None:
        client = Client(url)
        try:
            for raw in wallets[index]:
                hashes[index].append(client.call("eth_sendRawTransaction", raw))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(wallets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return [h for wallet in hashes for h in wallet]


def rate(label: str, count: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    per_s = count / (time.perf_counter() - start)
    print(f"    {label:<44}{per_s:>10,.0f} /s", flush=True)
    return per_s


def percentiles(label: str, samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    p50, p99 = statistics.median(ordered), ordered[int(0.99 * len(ordered))]
    print(f"    {label} latency ms: p50 {p50:.2f}  p99 {p99:.2f}", flush=True)
    return {f"{label} p50 ms": p50, f"{label} p99 ms": p99}


class Workload:
    """The client's script against one node: set-up (a token, funded wallets), then each
    measured part adding its figures to `results`."""

    def __init__(self, url: str, transfers: int, calls: int, node: tuple[int, str]) -> None:
        self.url, self.transfers, self.calls = url, transfers, calls
        self.node = node  # the node's process and its name, for the CPU lines
        self.client = Client(url)
        self.chain_id = int(self.client.call("eth_chainId"), 16)
        self.accounts = [Account.from_key(k).address for k in KEYS]
        self.nonces = self.pending_nonces()
        self.results: dict[str, float] = {}
        self.selector = keccak(b"transfer(address,uint256)")[:4]
        self.token = self.deploy_token()

    def pending_nonces(self) -> list[int]:
        return [
            int(self.client.call("eth_getTransactionCount", a, "pending"), 16)
            for a in self.accounts
        ]

    def deploy_token(self) -> str:
        """Deploy the token (its receipt gives the address) and give every wallet tokens of
        its own, so that ERC-20 transfers can come from all ten."""
        client = self.client
        token = load("LatticeToken")
        ctor = encode(["string", "string", "uint256"], ["Lattice", "LAT", 10**27])
        code = bytes.fromhex(token["bytecode"][2:]) + ctor
        deploy = signed(self.chain_id, KEYS[0], self.nonces[0], "", data=code, gas=2_000_000)
        deploy_hash = client.call("eth_sendRawTransaction", deploy)
        until_receipts(client, [deploy_hash])
        receipt = client.call("eth_getTransactionReceipt", deploy_hash)
        address = str(Web3.to_checksum_address(receipt["contractAddress"]))
        self.nonces[0] += 1
        hashes = []
        for k in range(1, len(KEYS)):
            payload = self.selector + encode(["address", "uint256"], [self.accounts[k], 10**24])
            raw = signed(self.chain_id, KEYS[0], self.nonces[0], address, data=payload, gas=80_000)
            hashes.append(client.call("eth_sendRawTransaction", raw))
            self.nonces[0] += 1
        until_receipts(client, hashes)
        return address

    def wallets(self, kind: str) -> list[list[str]]:
        """`transfers` transactions of a kind, spread over the ten wallets."""
        out: list[list[str]] = [[] for _ in KEYS]
        for i in range(self.transfers):
            k = i % len(KEYS)
            if kind == "eth":
                to = self.accounts[(k + 1) % len(KEYS)]
                raw = signed(self.chain_id, KEYS[k], self.nonces[k], to, value=1)
            else:
                holder = "0x" + (i + 1).to_bytes(20, "big").hex()
                payload = self.selector + encode(["address", "uint256"], [holder, 1])
                raw = signed(
                    self.chain_id, KEYS[k], self.nonces[k], self.token, data=payload, gas=80_000
                )
            out[k].append(raw)
            self.nonces[k] += 1
        return out

    def one_at_a_time(self, txs: list[list[str]]) -> None:
        interleaved = [raw for row in itertools.zip_longest(*txs) for raw in row if raw]
        sent = [self.client.call("eth_sendRawTransaction", r) for r in interleaved]
        until_receipts(self.client, sent)

    def all_wallets(self, txs: list[list[str]]) -> None:
        until_receipts(self.client, send_from_wallets(self.url, txs))

    def four_threads(self, txs: list[list[str]]) -> None:
        """Four submitting threads, each sending its share of the wallets' transactions
        (each wallet's in nonce order), as the issue's client script does."""
        threads = [
            [raw for row in itertools.zip_longest(*txs[t::SUBMITTERS]) for raw in row if raw]
            for t in range(SUBMITTERS)
        ]
        until_receipts(self.client, send_from_wallets(self.url, threads))

    def batches(self, txs: list[list[str]]) -> None:
        # One transaction per wallet in each batch: no node has to keep a batch's order.
        rows = [[raw for raw in row if raw] for row in itertools.zip_longest(*txs)]
        sent = [
            h
            for row in rows
            for h in self.client.batch("eth_sendRawTransaction", [[r] for r in row])
        ]
        until_receipts(self.client, sent)

    def bench_transfers(self) -> None:
        for kind, name in (("eth", "ETH"), ("erc20", "ERC-20")):
            for mode, label, send in (
                ("sequential", "one at a time", self.one_at_a_time),
                ("10 wallets", "ten wallets at once", self.all_wallets),
                ("4 threads", "four submitting threads", self.four_threads),
                ("batches", "batches of ten (one per wallet)", self.batches),
            ):
                txs = self.wallets(kind)
                key = f"{kind} transfers, {mode} /s"
                cpu, started = cpu_by_process(*self.node), time.perf_counter()
                try:
                    self.results[key] = rate(
                        f"{name} transfers, {label}, to all receipts",
                        self.transfers,
                        lambda send=send, txs=txs: send(txs),  # type: ignore[misc]
                    )
                    if mode == "4 threads":  # the workload: where its CPU went
                        elapsed = time.perf_counter() - started
                        report_cpu(cpu, cpu_by_process(*self.node), self.transfers, elapsed, "tx")
                except (RuntimeError, TimeoutError) as exc:  # a node refusing the workload
                    print(f"    {name} transfers, {label}: FAILED: {exc}"[:300], flush=True)
                    self.results[key] = float("nan")
                    self.nonces = self.pending_nonces()

    def bench_latency(self) -> None:
        """Submit-to-receipt: one transfer at a time, its receipt polled every 5 ms."""
        waits = []
        for _ in range(LATENCY_SAMPLES):
            raw = signed(self.chain_id, KEYS[1], self.nonces[1], self.accounts[2], value=1)
            self.nonces[1] += 1
            start = time.perf_counter()
            tx_hash = self.client.call("eth_sendRawTransaction", raw)
            while self.client.call("eth_getTransactionReceipt", tx_hash) is None:
                time.sleep(0.005)
            waits.append((time.perf_counter() - start) * 1000)
        self.results.update(percentiles("submit-to-receipt", waits))

    def timed(self, label: str, count: int, call: Callable[[int], object]) -> None:
        latencies = []
        for i in range(count):
            start = time.perf_counter()
            call(i)
            latencies.append((time.perf_counter() - start) * 1000)
        self.results.update(percentiles(label, latencies))

    def bench_reads(self) -> None:
        client, token = self.client, self.token

        def balance_of(holder: str | bytes) -> str:
            return "0x" + (keccak(b"balanceOf(address)")[:4] + encode(["address"], [holder])).hex()

        same = balance_of(self.accounts[0])
        self.timed(
            "eth_call",
            self.calls,
            lambda i: client.call("eth_call", {"to": token, "data": same}, "latest"),
        )
        # The same read for another holder each time: no node can answer it from memory.
        self.timed(
            "eth_call new",
            self.calls,
            lambda i: client.call(
                "eth_call",
                {"to": token, "data": balance_of((0xB0B << 140 | i).to_bytes(20, "big"))},
                "latest",
            ),
        )

        # What a wallet asks before each send: the gas of an ERC-20 transfer, to a new address.
        def estimate(i: int) -> object:
            to = (0xE57 << 140 | i).to_bytes(20, "big")
            payload = "0x" + (self.selector + encode(["address", "uint256"], [to, 1])).hex()
            call = {"from": self.accounts[0], "to": token, "data": payload}
            return client.call("eth_estimateGas", call)

        self.timed("eth_estimateGas", self.calls // 4, estimate)
        self.results["getBalance"] = rate(
            "eth_getBalance",
            self.calls,
            lambda: [
                client.call("eth_getBalance", self.accounts[1], "latest") for _ in range(self.calls)
            ],
        )


def workload(url: str, transfers: int, calls: int, node: tuple[int, str]) -> dict[str, float]:
    run = Workload(url, transfers, calls, node)
    idle, started = cpu_by_process(*node), time.perf_counter()
    time.sleep(IDLE_S)
    print("    idle, before the workload:", flush=True)
    wall = time.perf_counter() - started
    report_cpu(idle, cpu_by_process(*node), wall, wall, "s")
    run.bench_transfers()
    run.bench_latency()
    run.bench_reads()
    return run.results


def start_lattice(
    tmp: Path, *extra: str, root: Path = ROOT, blocks: tuple[float, int] = (0.25, 3)
) -> tuple[subprocess.Popen[bytes], str]:
    """A devnet in `tmp/lattice` answering JSON-RPC; `extra` flags; `root`: the source tree
    it runs from (another commit's worktree, `--against`); `blocks`: its block interval
    and finality depth."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = tmp / "devnet.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "devnet",
            "--data-dir",
            str(tmp / "lattice"),
            "--rpc-port",
            str(port),
            "--ws-port",
            str(free_port()),
            "--block-interval",
            str(blocks[0]),
            "--finality-depth",
            str(blocks[1]),
            *extra,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=root,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(root)},
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process)
    # The devnet's own set-up (dev account 0's deposit and API key) sends from account 0:
    # let it finish so that the workload's nonces do not race it.
    deadline = time.monotonic() + 120
    while not (tmp / "lattice" / "api-key").exists():
        if time.monotonic() > deadline or process.poll() is not None:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError("the devnet did not finish its set-up:\n" + "\n".join(tail))
        time.sleep(0.2)
    return process, url


def start_anvil() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [str(ANVIL), "--port", str(port), "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process)
    return process, url


def start_hardhat() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [str(HARDHAT), "node", "--hostname", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT / "bench" / "hardhat",
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process)
    return process, url


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the node exited")
        try:
            Client(url).call("eth_getBalance", Account.from_key(KEYS[0]).address, "latest")
            return
        except Exception:
            time.sleep(0.3)
    raise TimeoutError(url)


def worktree(ref: str, where: Path) -> Path:
    """A checkout of `ref` (its devnet runs from it, with this virtual environment)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(where), ref],
        check=True,
    )
    return where


def mean(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.fmean(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--against",
        metavar="REF",
        help="also run the devnet of this commit (a git worktree), in turn with this one",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="devnet runs of each tree (their mean is shown)"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip anvil and Hardhat")
    parser.add_argument(
        "--blocks",
        nargs=2,
        metavar=("INTERVAL", "DEPTH"),
        default=("0.25", "3"),
        help="the devnet's block interval (s) and finality depth (default 0.25 3; "
        "`make devnet` runs 1 10)",
    )
    args = parser.parse_args()
    blocks = (float(args.blocks[0]), int(args.blocks[1]))
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = [("lattice", ROOT)]
        if args.against:
            trees.append((f"@{args.against}"[:12], worktree(args.against, Path(tmp) / "against")))
        try:
            starters: list[tuple[str, Callable[[], tuple[subprocess.Popen[bytes], str]]]] = []
            for _ in range(args.repeat):  # in turn, so that drift on the machine hits both
                for name, root in trees:
                    run_dir = Path(tmp) / f"{len(starters)}"

                    def start(run_dir: Path = run_dir, root: Path = root) -> Any:
                        return start_lattice(run_dir, root=root, blocks=blocks)

                    starters.append((name, start))
            if not args.no_peers:
                starters += [("anvil", start_anvil), ("hardhat", start_hardhat)]
            for name, starter in starters:
                print(f"  {name}", flush=True)
                process, url = starter()
                try:
                    node = (process.pid, name if name in ("anvil", "hardhat") else "devnet")
                    runs.setdefault(name, []).append(
                        workload(url, args.transfers, args.calls, node)
                    )
                finally:
                    process.send_signal(signal.SIGTERM)
                    process.wait(60)
        finally:
            if args.against:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", trees[1][1]],
                    check=False,
                )
    figures = {name: mean(r) for name, r in runs.items()}
    names = list(figures)
    print("\n    " + " " * 34 + "".join(f"{n:>12}" for n in names) + "   lattice/others")
    for key, ours in figures["lattice"].items():
        row = "".join(f"{figures[n][key]:>12,.2f}" for n in names)
        ratios = "  ".join(f"x{ours / figures[n][key]:.2f}" for n in names[1:])
        print(f"    {key:<34}{row}   {ratios}")
    print_targets(figures)


#: Issue 15's targets: (figure, how lattice's must compare, the bound or anvil's multiple).
TARGETS = (
    ("eth transfers, 4 threads /s", "x anvil >=", 2.0),
    ("erc20 transfers, 4 threads /s", "x anvil >=", 2.0),
    ("eth_call new p50 ms", "ms <", 0.5),
)


def print_targets(figures: dict[str, dict[str, float]]) -> None:
    """Each target beside the figure that meets it or not (nothing is asserted)."""
    ours = figures["lattice"]
    print("\n    targets (issue 15)")
    for key, rule, bound in TARGETS:
        if rule.startswith("x"):
            if "anvil" not in figures:
                continue
            value = ours[key] / figures["anvil"][key]
            met = value >= bound
            print(f"    {key:<34} x{value:.2f} of anvil, target x{bound:.1f}: {_met(met)}")
        else:
            met = ours[key] < bound
            print(f"    {key:<34} {ours[key]:.2f} ms, target under {bound} ms: {_met(met)}")


def _met(met: bool) -> str:
    return "met" if met else "NOT met"


if __name__ == "__main__":
    main()
