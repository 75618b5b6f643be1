"""A network of nodes under load: `lattice testnet` with 1, 3, 5, 10 nodes, beside the
one-machine devnet (the peer: one process tree, no network between its parts).

    sudo .venv/bin/python bench/bench_network.py [--nodes 1,3] [--transfers 400]

Each network runs with the devnet's defaults (1 s blocks, finality depth 10). Measured:
- transfers to receipts: pre-signed ETH transfers from eight dev accounts, sent in turn to
  every node (eight client threads, each wallet sending its next as soon as the last was
  accepted), until every receipt is in on the node it was sent to: tx/s;
- submit-to-receipt latency of single transfers, sent to each node in turn: p50 and p99;
- memory per node: resident set of each node's process tree after the load (MiB);
- takeover: the active DAG processor SIGKILLed; seconds until the ordered chain grows
  again (a standby on another node takes over; 1-node networks have none: not measured);
- catch-up of a late node: a node started on the machine itself with an empty data
  directory after the load, in blocks per second until it reaches the network's head,
  beside the live rate (blocks per second the network made).

Everything runs on this machine (2 cores here): nodes, broker, worker and the client share
them, so the figures say what one machine does with N nodes, not what N hosts do.
Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account

from processors.execution.genesis import DEV_KEYS
from streams.broker import free_port

LATTICE = [sys.executable, "-m", "deploy.cli"]
SENDERS = DEV_KEYS[1:9]


def rpc(client: httpx.Client, url: str, method: str, params: list[Any] | None = None) -> Any:
    answer = client.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
    ).json()
    if "error" in answer:
        raise RuntimeError(f"{method} at {url}: {answer['error']}")
    return answer["result"]


def transfer(key: str, nonce: int, chain_id: int) -> str:
    tx = {
        "type": 2,
        "nonce": nonce,
        "to": "0x" + "77" * 20,
        "value": 1,
        "gas": 21_000,
        "maxFeePerGas": 30 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "chainId": chain_id,
    }
    return "0x" + bytes(Account.from_key(key).sign_transaction(tx).raw_transaction).hex()


class Network:
    """A running network: a testnet of `nodes` node hosts, or (nodes 0) the devnet."""

    def __init__(self, nodes: int, work: Path) -> None:
        self.nodes = nodes
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.log = work.parent / "network.log"
        if nodes:
            command = [*LATTICE, "testnet", "--nodes", str(nodes), "--data-dir", str(work)]
        else:
            port, ws = free_port(), free_port()
            command = [*LATTICE, "devnet", "--data-dir", str(work)]
            command += ["--rpc-port", str(port), "--ws-port", str(ws), "--workers", "0"]
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        deadline = time.monotonic() + 300
        while "ready;" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log.read_text())
            time.sleep(0.3)
        if nodes:
            self.info = json.loads((work / "testnet.json").read_text())
            self.urls = [n["rpc"] for n in self.info["nodes"]]
            self.kafka = self.info["broker"]
        else:
            found = json.loads((work / "devnet.json").read_text())
            self.info = {"nodes": []}
            self.urls = [found["rpc"]]
            self.kafka = found["kafka"]
        # "ready" means serving, not yet executed (issue 13): wait for genesis everywhere.
        with httpx.Client(timeout=10) as client:
            for url in self.urls:
                while True:
                    try:
                        rpc(client, url, "eth_blockNumber")
                        break
                    except (RuntimeError, httpx.HTTPError):
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.3)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(180)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def wait_receipts(client: httpx.Client, pending: dict[str, str], timeout: float) -> None:
    """Until every hash in `pending` (hash -> node URL) has its receipt there."""
    deadline = time.monotonic() + timeout
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} receipts missing")
        by_url: dict[str, list[str]] = {}
        for tx, url in pending.items():
            by_url.setdefault(url, []).append(tx)
        for url, hashes in by_url.items():
            for start in range(0, len(hashes), 100):
                chunk = hashes[start : start + 100]
                method = "eth_getTransactionReceipt"
                batch = [
                    {"jsonrpc": "2.0", "id": i, "method": method, "params": [h]}
                    for i, h in enumerate(chunk)
                ]
                for answer in client.post(url, json=batch).json():
                    if answer.get("result") is not None:
                        pending.pop(chunk[answer["id"]], None)
        time.sleep(0.2)


def throughput(net: Network, transfers: int, chain_id: int, nonces: dict[str, int]) -> float:
    per_sender = max(1, transfers // len(SENDERS))
    signed = {
        key: [transfer(key, nonces[key] + i, chain_id) for i in range(per_sender)]
        for key in SENDERS
    }
    sent: dict[str, str] = {}
    lock = threading.Lock()

    def wallet(index: int, key: str) -> None:
        with httpx.Client(timeout=30) as client:
            for i, raw in enumerate(signed[key]):
                url = net.urls[(index + i) % len(net.urls)]
                tx = rpc(client, url, "eth_sendRawTransaction", [raw])
                with lock:
                    sent[tx] = url

    started = time.perf_counter()
    threads = [threading.Thread(target=wallet, args=(i, k)) for i, k in enumerate(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with httpx.Client(timeout=30) as client:
        wait_receipts(client, dict(sent), timeout=600)
    took = time.perf_counter() - started
    for key in SENDERS:
        nonces[key] += per_sender
    return len(sent) / took


def latency(net: Network, count: int, chain_id: int, nonces: dict[str, int]) -> list[float]:
    key = SENDERS[0]
    waits = []
    with httpx.Client(timeout=30) as client:
        for i in range(count):
            url = net.urls[i % len(net.urls)]
            raw = transfer(key, nonces[key], chain_id)
            started = time.perf_counter()
            tx = rpc(client, url, "eth_sendRawTransaction", [raw])
            wait_receipts(client, {tx: url}, timeout=120)
            waits.append(time.perf_counter() - started)
            nonces[key] += 1
    return waits


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def node_memory(net: Network) -> list[float]:
    """Each node's process tree (the `ip netns exec` child of the testnet)."""
    found = []
    for node in net.info["nodes"]:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"node" in argv and node["name"].encode() in argv and b"--name" in argv:
                found.append(tree_rss_mib(int(entry)))
                break
    return found


def ordered_count(kafka: str) -> int:
    tail = subprocess.run(
        [*LATTICE, "topics", "--kafka", kafka], capture_output=True, text=True, timeout=60
    )
    for line in tail.stdout.splitlines():
        if line.startswith("lattice.blocks.ordered"):
            return int(line.split()[2])
    raise RuntimeError(tail.stdout + tail.stderr)


def takeover(net: Network) -> float | None:
    if len(net.info["nodes"]) < 2:
        return None
    with httpx.Client(timeout=30) as client:
        logs = [Path(n["data_dir"]) / "logs" / "dag.log" for n in net.info["nodes"][:2]]

        def last_lead(path: Path) -> str:
            lines = [x for x in path.read_text().splitlines() if "active; sending" in x]
            return lines[-1][:23] if lines else ""

        leader = max(range(2), key=lambda i: last_lead(logs[i]))
        status = rpc(client, net.urls[leader], "lattice_status")
        pid = next(p["pid"] for p in status["processes"] if p["name"] == "dag")
        before = ordered_count(net.kafka)
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        while ordered_count(net.kafka) <= before:
            if time.perf_counter() - killed > 120:
                return float("nan")
            time.sleep(0.2)
        return time.perf_counter() - killed


def catch_up(
    net: Network, work: Path, live_rate: float, snapshot: bool = False
) -> tuple[float, float]:
    """A node with an empty data directory started on the machine itself: blocks/s until
    it reaches the head the network had when it started (with `snapshot`, it starts from
    node 0's newest state snapshot, checked against the nodes' checkpoints)."""
    name = "late-snapshot" if snapshot else "late"
    with httpx.Client(timeout=30) as client:
        target = int(rpc(client, net.urls[0], "eth_blockNumber"), 16)
        port, ws = free_port(), free_port()
        log = work / f"{name}-node.log"
        command = [*LATTICE, "node", "--kafka", net.kafka, "--data-dir", str(work / name)]
        command += ["--rpc-port", str(port), "--ws-port", str(ws), "--name", name]
        if snapshot:
            signers = rpc(client, net.urls[0], "lattice_status")["checkpoints"]["signers"]
            command += ["--snapshot", net.urls[0], "--signers", ",".join(signers)]
        with open(log, "wb") as out:
            late = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        started = time.perf_counter()
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    head = int(rpc(client, url, "eth_blockNumber"), 16)
                except (httpx.HTTPError, RuntimeError):
                    head = -1
                if head >= target:
                    break
                if late.poll() is not None or time.perf_counter() - started > 600:
                    raise RuntimeError(log.read_text())
                time.sleep(0.2)
            return target / (time.perf_counter() - started), live_rate
        finally:
            late.send_signal(signal.SIGINT)
            late.wait(120)


def measure(nodes: int, transfers: int, singles: int) -> dict[str, Any]:
    chain_id = 27182
    with tempfile.TemporaryDirectory(prefix="lattice-bench-net-") as tmp:
        work = Path(tmp)
        net = Network(nodes, work / "net")
        try:
            started = time.perf_counter()
            with httpx.Client(timeout=30) as client:
                first_head = int(rpc(client, net.urls[0], "eth_blockNumber"), 16)
                nonces = {
                    key: int(
                        rpc(
                            client,
                            net.urls[0],
                            "eth_getTransactionCount",
                            [Account.from_key(key).address, "latest"],
                        ),
                        16,
                    )
                    for key in SENDERS
                }
            tps = throughput(net, transfers, chain_id, nonces)
            waits = latency(net, singles, chain_id, nonces)
            memory = node_memory(net) if nodes else [tree_rss_mib(net.process.pid)]
            with httpx.Client(timeout=30) as client:
                head = int(rpc(client, net.urls[0], "eth_blockNumber"), 16)
            live_rate = (head - first_head) / (time.perf_counter() - started)
            takeover_s = takeover(net) if nodes else None
            late_rate = catch_up(net, work, live_rate)[0] if nodes else None
            snapshot_rate = catch_up(net, work, live_rate, snapshot=True)[0] if nodes else None
        finally:
            net.stop()
    waits.sort()
    return {
        "tps": tps,
        "p50": statistics.median(waits),
        "p99": waits[min(len(waits) - 1, int(len(waits) * 0.99))],
        "memory": statistics.mean(memory) if memory else float("nan"),
        "takeover": takeover_s,
        "live": live_rate,
        "catch_up": late_rate,
        "from_snapshot": snapshot_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1,3", help="node counts, comma-separated")
    parser.add_argument("--transfers", type=int, default=400)
    parser.add_argument("--singles", type=int, default=20, help="single transfers timed")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_network: the testnet needs root (network namespaces)")
    counts = [int(n) for n in args.nodes.split(",")]
    rows = [("devnet (peer)", measure(0, args.transfers, args.singles))]
    rows += [(f"testnet {n} nodes", measure(n, args.transfers, args.singles)) for n in counts]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(f"{args.transfers} transfers, {args.singles} single transfers; 1 s blocks")
    print(
        f"{'network':<18} {'tx/s':>7} {'p50 s':>7} {'p99 s':>7} {'MiB/node':>9} "
        f"{'takeover s':>11} {'live blk/s':>11} {'catch-up blk/s':>15} {'snapshot blk/s':>15}"
    )
    for name, r in rows:
        print(
            f"{name:<18} {r['tps']:>7.1f} {r['p50']:>7.2f} {r['p99']:>7.2f} "
            f"{r['memory']:>9.0f} {fmt(r['takeover'], '.1f'):>11} {r['live']:>11.2f} "
            f"{fmt(r['catch_up'], '.1f'):>15} {fmt(r['from_snapshot'], '.1f'):>15}"
        )


if __name__ == "__main__":
    main()
