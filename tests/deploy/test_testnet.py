"""`lattice testnet`: four node hosts, a broker host and a worker host in network
namespaces (root only: CI runs as root). Transactions go to random nodes; every node serves
the same blocks, state roots and receipts; the worker on its own host is paid for a job
submitted through another node's OpenAI endpoint; the active verifier is SIGKILLed (its
standby on the other node takes over: the next job is settled, and no settlement is paid
twice); the active DAG processor is SIGKILLed (its standby takes over: the ordered chain has
no gap and no duplicate); a whole node is SIGKILLed (restarted, it catches up); a node's
link is cut for 30 s and restored (it catches up, no divergence); a fifth node joins from a
state snapshot and serves the same roots; Ctrl-C removes the namespaces, links and bridge."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.market.service import new_api_key
from processors.execution.genesis import DEV_KEYS, ETHER, JOB_MARKET, address_of, devnet_key
from processors.market.chain import authorise_call, deposit_call
from processors.market.client import send_call
from processors.market.ipfs import KuboRepo, files_of, multihash_of
from streams.broker import free_port
from streams.settings import CHAIN_ID
from tests.devnets import final_receipt, safe
from tests.txs import signed

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]
LATTICE = [sys.executable, "-m", "deploy.cli"]


def rpc(url: str, method: str, params: list[Any] | None = None) -> Any:
    answer = httpx.post(
        url,
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []},
        timeout=10,
    ).json()
    assert "error" not in answer, (url, method, answer)
    return answer["result"]


class Net:
    def __init__(self, data_dir: Path, process: subprocess.Popen[bytes], log: Path) -> None:
        self.data_dir, self.process, self.log = data_dir, process, log
        self.info: dict[str, Any] = json.loads((data_dir / "testnet.json").read_text())
        self.urls = [n["rpc"] for n in self.info["nodes"]]

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def testnet(tmp_path: Path) -> Iterator[Net]:
    data_dir, log = tmp_path / "testnet", tmp_path / "testnet.log"
    command = [*LATTICE, "testnet", "--nodes", "4", "--data-dir", str(data_dir)]
    command += ["--block-interval", "0.3", "--finality-depth", "3"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 180
    while "ready;" not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    net = Net(data_dir, process, log)
    try:
        yield net
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(120)


def send_to_random_nodes(net: Net, nonces: range, rng: random.Random) -> list[str]:
    return [
        rpc(rng.choice(net.urls), "eth_sendRawTransaction", ["0x" + signed(nonce=n).hex()])
        for n in nonces
    ]


def receipts_everywhere(net: Net, hashes: list[str], timeout: float = 120) -> None:
    """Every transaction has its receipt on every node once final there, and the same one
    (an optimistic head may still move, and nodes may be at different ones)."""
    deadline = time.monotonic() + timeout
    for tx in hashes:
        seen = [final_receipt(url, tx, max(1.0, deadline - time.monotonic())) for url in net.urls]
        assert all(r == seen[0] for r in seen) and seen[0]["status"] == "0x1"


def headers(url: str, numbers: range) -> list[tuple[str, str]]:
    """Each block's hash and state root, asked in JSON-RPC batches."""
    out = []
    for start in range(numbers.start, numbers.stop, 200):
        batch = [
            {"jsonrpc": "2.0", "id": n, "method": "eth_getBlockByNumber", "params": [hex(n), False]}
            for n in range(start, min(start + 200, numbers.stop))
        ]
        answers = sorted(httpx.post(url, json=batch, timeout=60).json(), key=lambda a: a["id"])
        out += [(a["result"]["hash"], a["result"]["stateRoot"]) for a in answers]
    return out


def same_chain_everywhere(net: Net) -> int:
    """Block hashes and state roots agree on every node at every final height they all
    have."""
    head = min(safe(url) for url in net.urls)
    chains = [headers(url, range(head + 1)) for url in net.urls]
    for number, seen in enumerate(zip(*chains, strict=True)):
        assert len(set(seen)) == 1, number
    return head


def records(net: Net, topic: str) -> list[dict[str, Any]]:
    tail = subprocess.run(
        [*LATTICE, "tail", topic, "-n", "-1", "--kafka", net.info["broker"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tail.returncode == 0, tail.stderr
    return [json.loads(line)["value"] for line in tail.stdout.splitlines()]


def ordered_chain(net: Net) -> list[int]:
    return [r["chain_index"] for r in records(net, "lattice.blocks.ordered")]


def active(net: Net, name: str, leading: str) -> dict[str, Any]:
    """The status of the standby set's member (`name`, on the first two nodes) that last
    took the lead (its log says `leading`)."""
    latest = max(
        (Path(n["data_dir"]) / "logs" / f"{name}.log" for n in net.info["nodes"][:2]),
        key=lambda p: max(
            (line[:23] for line in p.read_text().splitlines() if leading in line), default=""
        ),
    )
    node = next(n for n in net.info["nodes"] if Path(n["data_dir"]) == latest.parents[1])
    processes = rpc(node["rpc"], "lattice_status")["processes"]
    return next(p for p in processes if p["name"] == name)


def wait_for(what: str, check: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


def open_market(net: Net, tiny_gpt2: Path, tmp_path: Path) -> str:
    """The model imported through node 2, dev account 0's deposit and an API key; once the
    worker (on its own host, talking to node 0) is offered work. The API key."""
    url = net.urls[2]
    command = [*LATTICE, "model", "import", str(tiny_gpt2), "--name", "tiny-gpt2", "--rpc", url]
    imported = subprocess.run(
        [*command, "--dev-account", "1", "--data-dir", str(tmp_path / "importer")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert imported.returncode == 0, imported.stderr
    account, delegate = bytes.fromhex(DEV_KEYS[0][2:]), os.urandom(32)
    send_call(url, CHAIN_ID, account, JOB_MARKET, deposit_call(), value=10 * ETHER, wait_s=120)
    send_call(url, CHAIN_ID, account, JOB_MARKET, authorise_call(address_of(delegate)), wait_s=120)
    worker = "0x" + address_of(devnet_key("worker", 0)).hex()

    def offered() -> bool:
        nodes = httpx.get(f"{url}/v1/nodes", timeout=10).json()["nodes"]
        return any(n["address"] == worker and int(n["stake_wei"]) > 0 for n in nodes)

    wait_for("the worker in the market", offered)
    return new_api_key(delegate)


def paid_job(net: Net, url: str, key: str) -> dict[str, Any]:
    """A chat completion through `url`'s OpenAI endpoint, once settled: the job."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model="tiny-gpt2",
        messages=[{"role": "user", "content": "hello network"}],
        max_tokens=6,
        temperature=0,  # greedy: a sampled draw may end at its first token (empty content)
    )
    assert reply.choices[0].message.content
    job_id = "0x" + reply.id.removeprefix("chatcmpl-")

    def settled() -> dict[str, Any] | None:
        job = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if not job.get("settlements"):
            return None
        for settlement in job["settlements"]:
            found = rpc(url, "eth_getTransactionReceipt", [settlement["transaction_hash"]])
            if found is None:
                return None
            assert found["status"] == "0x1", found
        return dict(job)

    return wait_for(f"settlement of {job_id}", settled)  # type: ignore[no-any-return]


def join_from_snapshot(net: Net, data_dir: Path) -> dict[str, Any]:
    """`lattice node --snapshot` on the machine itself, once node 0 has made a snapshot:
    its process, its URL and the block its replica started from."""
    wait_for(
        "node 0's first snapshot",
        lambda: httpx.get(f"{net.urls[0]}/v1/snapshot", timeout=60).status_code == 200,
        timeout=300,
    )
    port, ws = free_port(), free_port()
    signers = rpc(net.urls[0], "lattice_status")["checkpoints"]["signers"]
    command = [*LATTICE, "node", "--kafka", net.info["broker"], "--data-dir", str(data_dir)]
    command += ["--rpc-port", str(port), "--ws-port", str(ws), "--name", "joined"]
    command += ["--snapshot", net.urls[0], "--signers", ",".join(signers)]
    log = data_dir.parent / "joined.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while "ready;" not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)
    assert "state sound:" in log.read_text() and "confirmed: at block" in log.read_text()
    execution = (data_dir / "logs" / "execution.log").read_text()
    start = int(execution.split("head ", 1)[1].split()[0])
    assert start > 0  # from the snapshot, not from genesis
    return {"process": process, "url": f"http://127.0.0.1:{port}", "start": start}


def serving(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def balance(url: str, address: bytes) -> int:
    return int(rpc(url, "eth_getBalance", ["0x" + address.hex(), "latest"]), 16)


@pytest.mark.timeout(1200)  # six hosts on two cores, a 30 s cut, and the catching up after
def test_four_nodes_serve_one_ledger_through_faults(
    testnet: Net, tiny_gpt2: Path, tmp_path: Path
) -> None:
    rng = random.Random(7)
    first = send_to_random_nodes(testnet, range(0, 6), rng)
    receipts_everywhere(testnet, first)
    assert same_chain_everywhere(testnet) > 0
    status = rpc(testnet.urls[2], "lattice_status")
    assert status["checkpoints"]["replicas"] == 4 and status["checkpoints"]["quorum"] == 3

    # The worker (its own host, node 0's gateway) is paid for a job sent through node 2.
    key = open_market(testnet, tiny_gpt2, tmp_path)
    worker = address_of(devnet_key("worker", 0))
    before = balance(testnet.urls[2], worker)
    job = paid_job(testnet, testnet.urls[2], key)
    paid = sum(int(s["paid_wei"]) for s in job["settlements"])
    assert paid > 0 and all(s["provider"] == "0x" + worker.hex() for s in job["settlements"])
    receipt = job["settlements"][0]["transaction_hash"]
    receipts_everywhere(testnet, [receipt])
    assert {balance(u, worker) for u in testnet.urls} == {before + paid}
    # The model reached the worker's host over IPFS: its own peer (which found node 0's
    # through its gateway) holds the manifest and every chunk of the graph, fetched over
    # bitswap (a worker reads a file's chunks from the manifest, not from its index block).
    card = httpx.get(f"{testnet.urls[0]}/v1/models/tiny-gpt2", timeout=10).json()
    document = json.loads(httpx.get(f"{testnet.urls[0]}/ipfs/{card['manifest_cid']}").content)
    repo = KuboRepo(testnet.data_dir / "worker" / "ipfs" / "repo")
    graph = files_of(document)["onnx"]
    blocks = [card["manifest_cid"], *(c["cid"] for c in graph["chunks"])]
    assert all(repo.has(multihash_of(cid)) for cid in blocks)

    # The active verifier dies; its standby settles the next job, and nothing twice.
    verifier = active(testnet, "verifier", "active; deciding from here")
    os.kill(verifier["pid"], signal.SIGKILL)
    paid_job(testnet, testnet.urls[3], key)
    settled = records(testnet, "lattice.jobs.settled")
    assert len(settled) == len({(r["job_id"], r["provider"]) for r in settled}) >= 2
    # One transaction per settlement, nonces gapless: neither verifier signed one twice.
    settler = "0x" + address_of(devnet_key("settler")).hex()
    signed_by = [t for t in records(testnet, "lattice.tx.submitted") if t["sender"] == settler]
    assert sorted(t["nonce"] for t in signed_by) == list(range(len(settled)))
    assert {t["hash"] for t in signed_by} == {r["transaction_hash"] for r in settled}

    # The active DAG processor dies; the standby on the other node takes over.
    dag = active(testnet, "dag", "active; sending")
    os.kill(dag["pid"], signal.SIGKILL)
    during = send_to_random_nodes(testnet, range(6, 12), rng)
    receipts_everywhere(testnet, during)
    chain = ordered_chain(testnet)
    assert chain == list(range(1, len(chain) + 1))  # no gap, no duplicate

    # One node is SIGKILLed whole (its children die with it): the others go on serving;
    # the testnet restarts it and it catches up.
    victim = testnet.info["nodes"][2]
    pid = json.loads((Path(victim["data_dir"]) / "devnet.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    alive = [testnet.urls[i] for i in (0, 1, 3)]
    meanwhile = [
        rpc(alive[n % 3], "eth_sendRawTransaction", ["0x" + signed(nonce=n).hex()])
        for n in range(12, 15)
    ]
    wait_for("node 2 back", lambda: f"{victim['name']} restarted" in testnet.output(), 120)
    wait_for("node 2 serving", lambda: serving(victim["rpc"]), 300)
    receipts_everywhere(testnet, meanwhile, timeout=300)
    same_chain_everywhere(testnet)

    # One node's link is cut for 30 s: the others go on; it catches up when restored.
    cut = testnet.info["nodes"][3]
    others = testnet.urls[:3]
    subprocess.run(["ip", "link", "set", cut["link"], "down"], check=True)
    try:
        rng_others = random.Random(8)
        sent = [
            rpc(rng_others.choice(others), "eth_sendRawTransaction", ["0x" + signed(nonce=n).hex()])
            for n in range(15, 18)
        ]
        time.sleep(30)
    finally:
        subprocess.run(["ip", "link", "set", cut["link"], "up"], check=True)
    receipts_everywhere(testnet, sent, timeout=180)
    same_chain_everywhere(testnet)
    chain = ordered_chain(testnet)
    assert chain == list(range(1, len(chain) + 1))

    # A fifth node joins from node 0's state snapshot, checked against the four's
    # checkpoints, and serves their state roots from the snapshot's height on.
    joined = join_from_snapshot(testnet, tmp_path / "joined")
    try:
        start, url = joined["start"], joined["url"]
        late = rpc(url, "eth_sendRawTransaction", ["0x" + signed(nonce=18).hex()])
        receipts_everywhere(testnet, [late])
        deadline = time.monotonic() + 60
        while (head := min(safe(u) for u in [*testnet.urls, url])) <= start:
            assert time.monotonic() < deadline, f"final head {head}, snapshot at {start}"
            time.sleep(0.3)
        span = range(start, head + 1)
        assert headers(url, span) == headers(testnet.urls[1], span)
    finally:
        joined["process"].send_signal(signal.SIGINT)
        joined["process"].wait(60)

    testnet.process.send_signal(signal.SIGINT)
    assert testnet.process.wait(120) == 0
    assert "stopped (namespaces, links and bridge removed)" in testnet.output()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert cut["netns"] not in names
    links = subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert testnet.info["bridge"] not in links
