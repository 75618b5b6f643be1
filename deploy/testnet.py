"""`lattice testnet --nodes N`: a network of test hosts on one machine.

Each host is a Linux network namespace with its own address on a private bridge: one broker
host (`lattice broker`), N node hosts (`lattice node`, each with its own key, data
directory and proposer) and one worker host (`lattice worker`), all on the devnet's
genesis. The machine itself has the bridge's first address, so every endpoint is reachable
from it. What crosses between hosts crosses a real (virtual) network: a host's link can be
cut (`ip link set <link> down`) and restored.

Roles: every node proposes; the first two run the DAG ordering, the publishing and the
market (matcher and verifier) as hot standbys of each other; the first also runs analytics.
Every node counts the checkpoints of all N (a majority finalises), and fetches content
blocks it lacks through its IPFS peer (which finds the others' peers through their gateways,
`--peers`) and then from the others' gateways. The worker's host runs an IPFS peer too.

The testnet supervises its hosts' processes like the devnet its children, prints every
endpoint, writes them to `<data-dir>/testnet.json`, and on Ctrl-C or SIGTERM stops the
processes and removes the namespaces, links and bridge. Needs root (namespaces) and
iproute2's `ip`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from deploy.host import HostError, locked
from deploy.node import node_key
from deploy.supervisor import Supervised, Supervisor
from processors.execution.checkpoints import address_of

BROKER_PORT = 9092
RPC_PORT = 8545
WS_PORT = 8546


@dataclass(frozen=True)
class TestHost:
    name: str
    netns: str
    #: The veth end on the machine's side (on the bridge): down cuts the host off.
    link: str
    ip: str


@dataclass(frozen=True)
class TestnetPlan:
    """The hosts of a testnet and their addresses (pure: nothing is made yet)."""

    bridge: str
    gateway_ip: str
    prefix_len: int
    broker: TestHost
    nodes: tuple[TestHost, ...]
    worker: TestHost


def plan(nodes: int, tag: str, subnet: str) -> TestnetPlan:
    """Hosts for `nodes` nodes; `tag` keeps names apart (interface names are at most 15
    characters), `subnet` holds every address (the bridge has the first)."""
    if not 1 <= nodes <= 200:
        raise ValueError("--nodes: 1 to 200")
    net = ipaddress.ip_network(subnet)
    if net.num_addresses < nodes + 8:
        raise ValueError(f"subnet {subnet} is too small for {nodes} nodes")
    address = [str(a) for a in net.hosts()]

    def host(name: str, index: int) -> TestHost:
        return TestHost(name, f"{tag}-{name}", f"{tag}{index}"[:15], address[index])

    return TestnetPlan(
        bridge=f"{tag}br"[:15],
        gateway_ip=address[0],
        prefix_len=net.prefixlen,
        broker=host("broker", 1),
        worker=host("worker", 2),
        nodes=tuple(host(f"node-{i}", 10 + i) for i in range(nodes)),
    )


def node_roles(index: int) -> str:
    roles = ["proposer"]
    if index < 2:
        roles += ["dag", "publisher", "market"]
    if index == 0:
        roles += ["analytics"]
    return ",".join(roles)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise HostError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _wait_port(ip: str, port: int, timeout: float, why: Supervised) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not why.running and why.state == "running":
            raise HostError(f"{why.name} exited at start (see {why.log_path})")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((ip, port)) == 0:
                return
        time.sleep(0.2)
    raise HostError(f"{why.name} did not open {ip}:{port} within {timeout:.0f}s")


class Testnet:
    def __init__(
        self,
        nodes: int,
        data_dir: Path,
        out: TextIO = sys.stdout,
        block_interval: float = 1.0,
        finality_depth: int = 10,
        subnet: str | None = None,
    ) -> None:
        if os.geteuid() != 0:
            raise HostError("lattice testnet makes network namespaces: run it as root")
        if shutil.which("ip") is None:
            raise HostError("lattice testnet needs iproute2's `ip` (apt install iproute2)")
        tag = f"lt{os.getpid() % 100000}"
        subnet = subnet or f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}.0/24"
        self.plan = plan(nodes, tag, subnet)
        self.data_dir = data_dir
        self.out = out
        self.block_interval = block_interval
        self.finality_depth = finality_depth
        self.supervisor = Supervisor()
        self._made: list[tuple[str, ...]] = []  # how to undo what was made, newest last

    def say(self, label: str, text: str) -> None:
        print(f"  {label:<11} {text}", file=self.out, flush=True)

    def _report(self, text: str) -> None:
        self.say("process", text)

    # -- the network -----------------------------------------------------------------------

    def _make_network(self) -> None:
        p = self.plan
        _ip("link", "add", p.bridge, "type", "bridge")
        self._made.append(("link", "del", p.bridge))
        _ip("addr", "add", f"{p.gateway_ip}/{p.prefix_len}", "dev", p.bridge)
        _ip("link", "set", p.bridge, "up")
        for host in (p.broker, p.worker, *p.nodes):
            _ip("netns", "add", host.netns)
            self._made.append(("netns", "del", host.netns))
            inner = f"{host.link}p"[:15]
            _ip("link", "add", host.link, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", host.netns)
            _ip("-n", host.netns, "link", "set", inner, "name", "eth0")
            _ip("-n", host.netns, "addr", "add", f"{host.ip}/{p.prefix_len}", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("link", "set", host.link, "master", p.bridge)
            _ip("link", "set", host.link, "up")
        hosts = len(p.nodes) + 2
        self.say("network", f"bridge {p.bridge} {p.gateway_ip}/{p.prefix_len}, {hosts} hosts")

    def _remove_network(self) -> None:
        for undo in reversed(self._made):
            subprocess.run(["ip", *undo], capture_output=True)
        self._made = []

    # -- the processes ---------------------------------------------------------------------

    def _on(self, host: TestHost, name: str, args: list[str], kind: str) -> Supervised:
        program = ("ip", "netns", "exec", host.netns, sys.executable, "-m", "deploy.cli")
        logs = self.data_dir / "logs"
        child = Supervised(name, args, logs, report=self._report, program=program, kind=kind)
        return self.supervisor.add(child)

    def _start(self) -> dict[str, object]:
        p, d = self.plan, self.data_dir
        bootstrap = f"{p.broker.ip}:{BROKER_PORT}"
        args = ["broker", "--host", p.broker.ip, "--broker-port", str(BROKER_PORT)]
        broker = self._on(p.broker, "broker", [*args, "--data-dir", str(d / "broker")], "broker")
        _wait_port(p.broker.ip, BROKER_PORT, 60, broker)
        self.say("broker", f"{bootstrap} (host {p.broker.netns})")
        keys = []
        for host in p.nodes:
            (d / host.name).mkdir(parents=True, exist_ok=True)
            keys.append(address_of(node_key(d / host.name / "node.key")))
        signers = ",".join("0x" + k.hex() for k in keys)
        nodes = []
        for index, host in enumerate(p.nodes):
            args = ["node", "--kafka", bootstrap, "--name", host.name, "--host", host.ip]
            args += ["--data-dir", str(d / host.name), "--roles", node_roles(index)]
            args += ["--signers", signers, "--block-interval", str(self.block_interval)]
            args += ["--finality-depth", str(self.finality_depth)]
            others = [f"http://{h.ip}:{RPC_PORT}" for h in p.nodes if h is not host]
            args += ["--peers", ",".join(others)] if others else []
            nodes.append(self._on(host, host.name, args, "node"))
        entries = []
        for host, child in zip(p.nodes, nodes, strict=True):
            _wait_port(host.ip, RPC_PORT, 120, child)
            entry = {
                "name": host.name,
                "rpc": f"http://{host.ip}:{RPC_PORT}",
                "ws": f"ws://{host.ip}:{WS_PORT}",
                "netns": host.netns,
                "link": host.link,
                "roles": node_roles(p.nodes.index(host)),
                "data_dir": str(d / host.name),
            }
            entries.append(entry)
            self.say(host.name, f"{entry['rpc']}  {entry['ws']}  ({entry['roles']})")
        rpc = str(entries[0]["rpc"])
        # The worker's host runs an IPFS peer of its own, connected to every node's: models
        # come to it over bitswap from whichever holds them.
        peer = ["ipfs", "run", "--data-dir", str(d / "worker"), "--listen", p.worker.ip]
        gateways = ",".join(str(e["rpc"]) for e in entries)  # bitswap asks only its peers
        self._on(p.worker, "worker-ipfs", [*peer, "--gateways", gateways], "node")
        worker = ["worker", "--kafka", bootstrap, "--rpc", rpc, "--devnet-index", "0"]
        self._on(p.worker, "worker", [*worker, "--data-dir", str(d / "worker")], "worker")
        self.say("worker", f"host {p.worker.netns} ({p.worker.ip}), paid through {rpc}")
        return {
            "nodes": entries,
            "broker": bootstrap,
            "worker": {"netns": p.worker.netns, "ip": p.worker.ip, "link": p.worker.link},
            "bridge": p.bridge,
            "pid": os.getpid(),
            "plan": asdict(p),
        }

    def _stop_processes(self) -> None:
        for kind in ("worker", "node", "broker"):
            group = [c for c in self.supervisor.children if c.kind == kind]
            for child in group:
                child.terminate()
            for child in group:
                child.stop(60)

    def run(self) -> None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        with locked(self.data_dir, "testnet"):
            print(f"lattice testnet: {len(self.plan.nodes)} nodes", file=self.out, flush=True)
            path = self.data_dir / "testnet.json"
            try:
                self._make_network()
                described = self._start()
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(described, indent=2) + "\n")
                os.replace(tmp, path)
                self.say("endpoints", str(path))
                print("ready; Ctrl-C to stop", file=self.out, flush=True)
                problem = None
                while problem is None and not stop.wait(0.5):
                    problem = self.supervisor.poll()
                if problem:
                    raise HostError(problem)
            finally:
                print("stopping...", file=self.out, flush=True)
                path.unlink(missing_ok=True)
                self._stop_processes()
                self._remove_network()
                print("stopped (namespaces, links and bridge removed)", file=self.out, flush=True)
