"""The fault harness: a devnet under load, one fault after another, and the ledger's books
checked after each (`tests/faults/test_faults.py` runs the short version in CI,
`bench/bench_faults.py` the long one).

The load is wallets and a market user. One thread per dev account sends transfers of a
value of its own to a recipient of its own, one at a time, each re-sent until the devnet
answers (a wallet whose request got no answer sends the same signed bytes again): ETH
transfers, or, for the contract wallets, ERC-20 transfers of a LatticeToken the wallet
deployed first. A transfer counts as *acknowledged* once the devnet returned its hash. With
`market`, a user submits inference jobs to the devnet's workers (`tests.faults.market`).

After each fault the load pauses and the books are checked:

- every acknowledged transaction has exactly one receipt, or one recorded rejection
  (`lost`: neither, within the deadline; `doubled`: more than one record of either on the
  log);
- every sender's nonce is the number of its transfers executed, and every recipient's
  balance (ETH, or tokens) the sum of their values, to the wei;
- every acknowledged job is settled, paid at most once, and JobMarket's deposits,
  payouts, fees and stakes add up (`tests.faults.market`).

`recovery` is how long after the fault the devnet acknowledged a transaction again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from eth_abi.abi import encode
from eth_account import Account
from eth_utils.address import to_checksum_address

from contracts.build import load
from processors.execution.genesis import DEV_ACCOUNTS, DEV_KEYS
from processors.market.chain import call_data
from streams.settings import CHAIN_ID
from tests.devnets import Devnet, rpc
from tests.faults.market import MODEL, Jobs, MarketBooks

#: Dev accounts the ETH wallets send from (account 0 is the devnet's own: its API key
#: set-up and the market user's deposit), and those sending ERC-20 transfers.
WALLETS = (1, 2, 3, 4)
TOKEN_WALLETS = (5, 6)
TRANSFER = "transfer(address,uint256)"
#: How long the books may take to settle after a fault before a transaction counts as lost.
SETTLE_S = 60.0


@dataclass
class Sent:
    sender: int
    nonce: int
    value: int
    #: When the request that got the hash was sent, and when the hash came back.
    asked: float
    at: float


@dataclass
class Wallet:
    index: int
    recipient: str
    #: The wallet's own ERC-20 (the transfers are its tokens), or None: ETH transfers.
    token: str | None = None
    #: The nonce of its first transfer (a token wallet deployed its token before).
    first: int = 0
    nonce: int = 0
    #: Transfers whose hash the devnet returned.
    acknowledged: dict[str, Sent] = field(default_factory=dict)
    #: Transfers the devnet says are on the log already (a re-send after no answer).
    landed: int = 0
    #: The transfer at `nonce` was sent and got no answer yet: it may have landed.
    unanswered: bool = False

    @property
    def key(self) -> str:
        return DEV_KEYS[self.index]

    def value_of(self, nonce: int) -> int:
        return 1_000_000 + 1000 * self.index + nonce

    def expected(self, nonce: int) -> int:
        """What the recipient holds once the transfers below `nonce` executed."""
        return sum(self.value_of(n) for n in range(self.first, nonce))

    def transaction(self) -> dict[str, Any]:
        tx: dict[str, Any] = {
            "type": 2,
            "chainId": CHAIN_ID,
            "nonce": self.nonce,
            "maxFeePerGas": 10**11,
            "maxPriorityFeePerGas": 10**9,
        }
        value = self.value_of(self.nonce)
        if self.token is None:
            return tx | {"to": self.recipient, "value": value, "gas": 21_000}
        data = call_data(TRANSFER, self.recipient, value)
        return tx | {"to": self.token, "value": 0, "gas": 80_000, "data": data}

    def holding(self, url: str) -> int:
        """The recipient's balance: wei, or the token's."""
        if self.token is None:
            return int(rpc(url, "eth_getBalance", [self.recipient, "latest"]), 16)
        data = call_data("balanceOf(address)", self.recipient)
        call = {"to": self.token, "data": "0x" + data.hex()}
        return int(rpc(url, "eth_call", [call, "latest"]), 16)


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Refused(Exception):
    """An HTTP status other than 200 on JSON-RPC."""


def server_errors(errors: Counter[str]) -> dict[str, int]:
    """The answers that were a server failure, which no fault excuses: a 5xx other than
    503 (try again) and 504 (no node answered a job in time)."""
    return {
        k: n
        for k, n in errors.items()
        if any(k.startswith(f"{p}5") for p in ("HTTP ", "job: "))
        and not any(k.startswith(f"{p}50{c}") for p in ("HTTP ", "job: ") for c in "34")
    }


def last_traceback(net: Devnet) -> str:
    """The devnet's last logged traceback (a 500's cause), from every start of it."""
    lines = net.history().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not starts:
        return "no traceback in the devnet's log"
    block = [lines[starts[-1]]]
    for line in lines[starts[-1] + 1 :]:
        block.append(line)
        if line and not line[0].isspace():  # the exception's own line ends a traceback
            break
    return "\n".join(block[-10:])


def deploy_token(url: str, wallet: Wallet) -> str:
    """Deploy a LatticeToken whose whole supply is the wallet's; its address."""
    artifact = load("LatticeToken")
    ctor = encode(["string", "string", "uint256"], [f"Harness {wallet.index}", "HRN", 10**27])
    tx = {
        "type": 2,
        "chainId": CHAIN_ID,
        "nonce": wallet.nonce,
        "value": 0,
        "data": bytes.fromhex(artifact["bytecode"][2:]) + ctor,
        "gas": 2_000_000,
        "maxFeePerGas": 10**11,
        "maxPriorityFeePerGas": 10**9,
    }
    raw = Account.sign_transaction(tx, wallet.key).raw_transaction.to_0x_hex()
    tx_hash = rpc(url, "eth_sendRawTransaction", [raw])
    deadline = time.monotonic() + SETTLE_S
    while (receipt := rpc(url, "eth_getTransactionReceipt", [tx_hash])) is None:
        assert time.monotonic() < deadline, f"no receipt for the token of wallet {wallet.index}"
        time.sleep(0.2)
    assert receipt["status"] == "0x1", receipt
    wallet.nonce += 1
    return str(to_checksum_address(receipt["contractAddress"]))


class Load:
    """The wallets and the market user, sending until paused."""

    def __init__(
        self,
        url: str,
        wallets: tuple[int, ...] = WALLETS,
        token_wallets: tuple[int, ...] = TOKEN_WALLETS,
        jobs: Jobs | None = None,
    ) -> None:
        self.url = url
        self.wallets = [
            Wallet(i, to_checksum_address(f"0x{0xFA00 + i:040x}"))
            for i in (*wallets, *token_wallets)
        ]
        self._tokens = token_wallets
        self.jobs = jobs
        self._go = threading.Event()
        self._quit = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: Counter[str] = Counter()
        #: A wallet thread that died (the run is void).
        self.crashed: list[str] = []

    def start(self) -> None:
        for wallet in self.wallets:
            address = Account.from_key(wallet.key).address
            wallet.nonce = int(rpc(self.url, "eth_getTransactionCount", [address, "pending"]), 16)
            if wallet.index in self._tokens:
                wallet.token = deploy_token(self.url, wallet)
            wallet.first = wallet.nonce
        for wallet in self.wallets:
            self._thread(self._send, wallet)
        if self.jobs is not None:
            self._thread(self._market, self.jobs)
        self._go.set()

    def _thread(self, target: Callable[[Any], None], arg: Any) -> None:
        thread = threading.Thread(target=target, args=(arg,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def pause(self) -> None:
        self._go.clear()
        time.sleep(0.5)  # a send under way finishes (or keeps retrying until resumed)

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self._quit.set()
        self._go.set()
        for thread in self._threads:
            thread.join(30)

    def acknowledged(self) -> dict[str, Sent]:
        return {h: s for w in self.wallets for h, s in w.acknowledged.items()}

    def acknowledged_after(self, moment: float) -> list[Sent]:
        """Sends asked after `moment` and acknowledged (an answer already on its way when
        a fault struck does not show the devnet working again)."""
        return [s for s in self.acknowledged().values() if s.asked > moment]

    def _send(self, wallet: Wallet) -> None:
        try:
            self._wallet(wallet)
        except BaseException as exc:
            self.crashed.append(f"wallet {wallet.index}: {exc!r}")
            raise

    def _market(self, jobs: Jobs) -> None:
        try:
            jobs.run(self._go, self._quit)
        except BaseException as exc:
            self.crashed.append(f"jobs: {exc!r}")
            raise

    def _wallet(self, wallet: Wallet) -> None:
        client = httpx.Client(timeout=30)
        raw: str | None = None
        while not self._quit.is_set():
            self._go.wait()
            if self._quit.is_set():
                return
            if raw is None:
                tx = wallet.transaction()
                raw = Account.sign_transaction(tx, wallet.key).raw_transaction.to_0x_hex()
            body = {"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": [raw]}
            asked = time.time()
            try:
                response = client.post(self.url, json=body)
                if response.status_code != 200:
                    raise Refused(f"HTTP {response.status_code}")
                answer = response.json()
            except (httpx.HTTPError, ValueError, Refused) as exc:
                wallet.unanswered = True
                self.errors[str(exc) if isinstance(exc, Refused) else type(exc).__name__] += 1
                time.sleep(0.2)
                continue
            if "result" in answer:
                value = wallet.value_of(wallet.nonce)
                sent = Sent(wallet.index, wallet.nonce, value, asked, time.time())
                wallet.acknowledged[answer["result"]] = sent
            else:
                message = str(answer.get("error", {}).get("message", answer))
                if "already known" in message or "nonce too low" in message:
                    wallet.landed += 1  # an earlier send of these bytes did land
                else:
                    wallet.unanswered = True  # a refusal for now ("unavailable"): re-sent
                    self.errors[message[:60]] += 1
                    time.sleep(0.2)
                    continue
            wallet.nonce += 1
            wallet.unanswered = False
            raw = None


@dataclass(frozen=True)
class Outcome:
    fault: str
    #: Transactions and jobs acknowledged so far.
    acknowledged: int
    jobs: int
    lost: int
    doubled: int
    recovery_s: float | None
    books: str


def receipts_of(url: str, hashes: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for start in range(0, len(hashes), 100):
        chunk = hashes[start : start + 100]
        batch = [
            {"jsonrpc": "2.0", "id": i, "method": "eth_getTransactionReceipt", "params": [h]}
            for i, h in enumerate(chunk)
        ]
        for answer in httpx.post(url, json=batch, timeout=30).json():
            if answer.get("result") is not None:
                found[chunk[answer["id"]]] = answer["result"]
    return found


def records_per_hash(net: Devnet, topic: str) -> Counter[str]:
    """How many records of each transaction the topic holds (keyed by tx hash)."""
    result = net.cli("tail", topic, "-n", "-1", timeout=120)
    assert result.returncode == 0, result.stderr
    return Counter(json.loads(line)["key"] for line in result.stdout.splitlines())


def books(net: Devnet, load: Load) -> str:
    """'' when nonces and balances add up to the wei, else what does not."""
    problems = []
    for wallet in load.wallets:
        address = Account.from_key(wallet.key).address
        nonce = int(rpc(net.url, "eth_getTransactionCount", [address, "latest"]), 16)
        balance = wallet.holding(net.url)
        expected = wallet.expected(nonce)
        # A transfer sent without an answer yet (the load paused while re-sending it) may
        # have landed: it is neither lost nor doubled.
        if nonce != wallet.nonce and not (wallet.unanswered and nonce == wallet.nonce + 1):
            problems.append(f"wallet {wallet.index}: nonce {nonce}, sent {wallet.nonce}")
        if balance != expected:
            unit = "wei" if wallet.token is None else "tokens"
            problems.append(f"recipient {wallet.index}: {balance} {unit}, expected {expected}")
    return "; ".join(problems)


def settle(net: Devnet, load: Load, fault: str, at: float, market: MarketBooks | None) -> Outcome:
    """Pause the load, wait for the books, and count."""
    load.pause()
    acknowledged = load.acknowledged()
    hashes = list(acknowledged)
    deadline = time.monotonic() + SETTLE_S
    receipts: dict[str, Any] = {}
    while True:
        receipts.update(receipts_of(net.url, [h for h in hashes if h not in receipts]))
        if len(receipts) == len(hashes) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    missing = [h for h in hashes if h not in receipts]
    rejected = records_per_hash(net, "lattice.tx.rejected") if missing else Counter()
    lost = [h for h in missing if rejected[h] == 0]
    on_log = records_per_hash(net, "lattice.receipts")
    doubled = [h for h in hashes if on_log[h] + rejected[h] > 1]
    after = load.acknowledged_after(at)
    recovery = min(s.at for s in after) - at if after else None
    problems = [problem] if (problem := books(net, load)) else []
    jobs = list(load.jobs.acknowledged) if load.jobs is not None else []
    failed = server_errors(load.errors + (load.jobs.errors if load.jobs else Counter()))
    if failed:
        problems.append(f"server errors so far: {failed}; {last_traceback(net)}")
    if market is not None:
        job_books = market.check(jobs, deadline)
        lost += job_books.lost
        doubled += job_books.doubled
        problems += job_books.problems
    outcome = Outcome(
        fault, len(hashes), len(jobs), len(lost), len(doubled), recovery, "; ".join(problems)
    )
    load.resume()
    return outcome


def processes(net: Devnet) -> dict[str, int]:
    """The devnet's children by name, and `broker`, with their pids."""
    assert net.process is not None
    found = {p["name"]: p["pid"] for p in rpc(net.url, "lattice_status")["processes"]}
    for pid in descendants(net.process.pid):
        if "tansu" in command_of(pid):
            found["broker"] = pid
    return found


#: A fault: does it to the devnet, and returns when it struck (time.time()).
Fault = Callable[[Devnet], float]


def kill_child(name: str) -> Fault:
    def fault(net: Devnet) -> float:
        os.kill(processes(net)[name], signal.SIGKILL)
        return time.time()

    fault.__name__ = f"SIGKILL {name}"
    return fault


def kill_everything(net: Devnet) -> float:
    """SIGKILL every process of the devnet at once, the broker included, and start it
    again on its data directory (as after a power cut: what is not fsynced is gone)."""
    assert net.process is not None
    everyone = [net.process.pid, *descendants(net.process.pid)]
    for pid in everyone:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    struck = time.time()
    net.process.wait(30)
    net.process = None
    net.start()
    return struck


kill_everything.__name__ = "SIGKILL the whole devnet"


def kill_broker(net: Devnet) -> float:
    """SIGKILL the embedded broker alone; the devnet starts again on its archive."""
    readies = net.output().count("ready;")
    os.kill(processes(net)["broker"], signal.SIGKILL)
    struck = time.time()
    deadline = time.monotonic() + 120
    while net.output().count("ready;") == readies:
        assert net.process is not None and net.process.poll() is None, net.output()
        assert time.monotonic() < deadline, net.output()
        time.sleep(0.1)
    return struck


kill_broker.__name__ = "SIGKILL the broker"


def run_faults(
    net: Devnet,
    faults: list[Fault],
    load_s: float,
    say: Callable[[str], None] = print,
    market: bool = False,
) -> Iterator[Outcome]:
    """Load, then each fault in turn under load, settling the books after each. With
    `market`, a user's jobs too: the devnet needs a worker and the model
    `tests.faults.market.MODEL`, and its API key in `<data dir>/api-key`."""
    jobs = books = None
    if market:
        api_key = (net.data_dir / "api-key").read_text().strip()
        jobs = Jobs(net.url, api_key)
        books = MarketBooks(net.url, bytes.fromhex(DEV_ACCOUNTS[0][2:]))
    load = Load(net.url, jobs=jobs)
    load.start()
    try:
        time.sleep(load_s)
        yield settle(net, load, "none (load only)", time.time(), books)
        for fault in faults:
            time.sleep(load_s / 2)
            say(f"fault: {fault.__name__}")
            at = fault(net)
            time.sleep(load_s / 2)
            yield settle(net, load, fault.__name__, at, books)
    finally:
        load.stop()
        assert not load.crashed, load.crashed
        errors = load.errors + (jobs.errors if jobs is not None else Counter())
        if errors:
            say(f"answers that were not a hash or a job (re-sent): {dict(errors)}")


def table(outcomes: list[Outcome]) -> str:
    head = f"{'fault':<28} {'transactions':>12} {'jobs':>5} {'lost':>5} {'doubled':>7}"
    head += f" {'recovery s':>10}  books"
    lines = [head, "-" * len(head)]
    for o in outcomes:
        recovery = f"{o.recovery_s:.1f}" if o.recovery_s is not None else "-"
        line = f"{o.fault:<28} {o.acknowledged:>12} {o.jobs:>5} {o.lost:>5} {o.doubled:>7}"
        lines.append(line + f" {recovery:>10}  " + (o.books or "add up"))
    return "\n".join(lines)


#: The devnet's settings for a market under faults: one node per job (no random
#: redundancy, so a job is paid once), and leases short enough that a job whose worker
#: died is given again within the books' deadline.
MARKET_ENV = {"LATTICE_REDUNDANCY_BPS": "0", "LATTICE_LEASE_MS": "4000"}


def set_up_market(net: Devnet, model: Path) -> None:
    """Import the model the jobs ask for and wait for a worker to serve it."""
    net.wait_set_up()
    imported = net.cli(
        "model", "import", str(model), "--name", MODEL, "--dev-account", "1", timeout=300
    )
    assert imported.returncode == 0, imported.stderr
    deadline = time.monotonic() + 120
    while not httpx.get(f"{net.url}/v1/nodes", timeout=30).json()["nodes"]:
        assert time.monotonic() < deadline, "no worker registered"
        time.sleep(0.5)
