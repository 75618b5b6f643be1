"""The fault harness: a devnet under load, one fault after another, and the ledger's books
checked after each (`tests/faults/test_faults.py` runs the short version in CI,
`bench/bench_faults.py` the long one).

The load is wallets: one thread per dev account, each sending ETH transfers of a value of
its own to a recipient of its own, one at a time, each re-sent until the devnet answers (a
wallet whose request got no answer sends the same signed bytes again). A transfer counts
as *acknowledged* once the devnet returned its hash.

After each fault the load pauses and the books are checked:

- every acknowledged transaction has exactly one receipt, or one recorded rejection
  (`lost`: neither, within the deadline; `doubled`: more than one record of either on the
  log);
- every sender's nonce is the number of its transfers executed, and every recipient's
  balance the sum of their values, to the wei.

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
from eth_account import Account
from eth_utils.address import to_checksum_address

from processors.execution.genesis import DEV_KEYS
from streams.settings import CHAIN_ID
from tests.devnets import Devnet, rpc

#: Dev accounts the wallets send from (account 0 is the devnet's own: its API key set-up).
WALLETS = (1, 2, 3, 4)
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


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Load:
    """The wallets, sending until paused."""

    def __init__(self, url: str, wallets: tuple[int, ...] = WALLETS) -> None:
        self.url = url
        self.wallets = [Wallet(i, to_checksum_address(f"0x{0xFA00 + i:040x}")) for i in wallets]
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
            thread = threading.Thread(target=self._send, args=(wallet,), daemon=True)
            thread.start()
            self._threads.append(thread)
        self._go.set()

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

    def _wallet(self, wallet: Wallet) -> None:
        client = httpx.Client(timeout=30)
        raw: str | None = None
        while not self._quit.is_set():
            self._go.wait()
            if self._quit.is_set():
                return
            if raw is None:
                tx = {
                    "type": 2,
                    "chainId": CHAIN_ID,
                    "nonce": wallet.nonce,
                    "to": wallet.recipient,
                    "value": wallet.value_of(wallet.nonce),
                    "gas": 21_000,
                    "maxFeePerGas": 10**11,
                    "maxPriorityFeePerGas": 10**9,
                }
                raw = Account.sign_transaction(tx, wallet.key).raw_transaction.to_0x_hex()
            body = {"jsonrpc": "2.0", "id": 1, "method": "eth_sendRawTransaction", "params": [raw]}
            asked = time.time()
            try:
                answer = client.post(self.url, json=body).json()
            except (httpx.HTTPError, ValueError) as exc:
                wallet.unanswered = True
                self.errors[type(exc).__name__] += 1
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
    acknowledged: int
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
        balance = int(rpc(net.url, "eth_getBalance", [wallet.recipient, "latest"]), 16)
        expected = sum(wallet.value_of(n) for n in range(nonce))
        # A transfer sent without an answer yet (the load paused while re-sending it) may
        # have landed: it is neither lost nor doubled.
        if nonce != wallet.nonce and not (wallet.unanswered and nonce == wallet.nonce + 1):
            problems.append(f"wallet {wallet.index}: nonce {nonce}, sent {wallet.nonce}")
        if balance != expected:
            problems.append(f"recipient {wallet.index}: {balance} wei, expected {expected}")
    return "; ".join(problems)


def settle(net: Devnet, load: Load, fault: str, at: float) -> Outcome:
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
    outcome = Outcome(fault, len(hashes), len(lost), len(doubled), recovery, books(net, load))
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
) -> Iterator[Outcome]:
    """Load, then each fault in turn under load, settling the books after each."""
    load = Load(net.url)
    load.start()
    try:
        time.sleep(load_s)
        yield settle(net, load, "none (load only)", time.time())
        for fault in faults:
            time.sleep(load_s / 2)
            say(f"fault: {fault.__name__}")
            at = fault(net)
            time.sleep(load_s / 2)
            yield settle(net, load, fault.__name__, at)
    finally:
        load.stop()
        assert not load.crashed, load.crashed
        if load.errors:
            say(f"answers that were not a hash (re-sent): {dict(load.errors)}")


def table(outcomes: list[Outcome]) -> str:
    head = f"{'fault':<28} {'acknowledged':>12} {'lost':>5} {'doubled':>7} {'recovery s':>10}"
    head += "  books"
    lines = [head, "-" * len(head)]
    for o in outcomes:
        recovery = f"{o.recovery_s:.1f}" if o.recovery_s is not None else "-"
        line = f"{o.fault:<28} {o.acknowledged:>12} {o.lost:>5} {o.doubled:>7} {recovery:>10}  "
        lines.append(line + (o.books or "add up"))
    return "\n".join(lines)
