"""`lattice node`: what one host runs to take part in a network, given its Kafka.

Every node runs its own execution replica (its store in its own data directory, its
checkpoints signed with its own key) and a gateway serving from that replica: JSON-RPC,
WebSocket, REST, the market and OpenAI endpoints, the dashboard and /metrics. Roles add
children (see `ROLES`). Start-up refuses, before anything runs, a Kafka that does not
answer, a network whose chain id or genesis differ from the node's (`deploy.network`), and
a data directory another node holds.

The node's key is `<data-dir>/node.key` (0x-hex, mode 0600), made at the first start: its
address signs the node's checkpoints and, with the proposer role, its blocks.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import uvloop
from coincurve import PrivateKey

from deploy import endpoints, snapshot
from deploy.host import ChildSpec, Host, HostError, check_port, locked
from deploy.network import NetworkError, join, load_genesis, ours, probe, rules_of
from deploy.roles import ROLES
from gateway.checkpointview import CheckpointView
from processors.execution.checkpoints import address_of
from schemas.events import NetworkGenesis
from streams.admin import ensure_topics
from streams.settings import Settings, SettingsError
from streams.topics import TOPICS

#: The consumer groups that elect the active member of each standby set; the members'
#: common names are the processors' own (lattice-dag, lattice-execution).
DAG_GROUP = "lattice-dag-active"
PUBLISHER_GROUP = "lattice-publisher-active"
MATCHER_GROUP = "lattice-matcher-active"
VERIFIER_GROUP = "lattice-verifier-active"


def parse_roles(text: str) -> frozenset[str]:
    roles = frozenset(r.strip() for r in text.split(",") if r.strip())
    unknown = sorted(roles - ROLES.keys())
    if unknown:
        raise SettingsError(f"unknown role(s) {', '.join(unknown)}; known: {', '.join(ROLES)}")
    return roles


def parse_signers(text: str) -> frozenset[bytes]:
    signers = set()
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        try:
            address = bytes.fromhex(item.removeprefix("0x"))
        except ValueError:
            address = b""
        if len(address) != 20:
            raise SettingsError(f"signers: {item!r} is not a 20-byte 0x-hex address")
        signers.add(address)
    return frozenset(signers)


def node_key(path: Path) -> PrivateKey:
    """The node's key, made (readable by its owner only) when the file does not exist."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("0x" + PrivateKey().secret.hex() + "\n")
    try:
        return PrivateKey(bytes.fromhex(path.read_text().strip().removeprefix("0x")))
    except ValueError as exc:
        raise SettingsError(f"{path}: not a secp256k1 private key ({exc})") from None


def _own_gateway(s: Settings) -> str:
    """The node's gateway as its own children reach it."""
    host = "127.0.0.1" if s.host in ("0.0.0.0", "") else s.host
    return f"http://{host}:{s.rpc_port}"


def node_workers(s: Settings, roles: Iterable[str], bootstrap: str) -> list[ChildSpec]:
    """The local worker of the `worker` role (started once the gateway answers: the
    worker registers and stakes through it)."""
    if "worker" not in roles:
        return []
    assert s.worker_key_file is not None
    args = ["worker", "--kafka", bootstrap, "--data-dir", str(s.data_dir / "worker")]
    args += ["--rpc", _own_gateway(s), "--key-file", str(s.worker_key_file)]
    return [ChildSpec("worker", tuple(args), kind="worker")]


def node_children(
    s: Settings, name: str, roles: Iterable[str], bootstrap: str, key_file: Path
) -> list[ChildSpec]:
    """The children of a node with these roles (pure: the plan, not the processes)."""
    roles = set(roles)
    data = ("--kafka", bootstrap, "--data-dir", str(s.data_dir))
    dag = (*data, "--ghostdag-k", str(s.ghostdag_k), "--finality-depth", str(s.finality_depth))
    genesis = ("--genesis", str(s.genesis_file)) if s.genesis_file else ()
    # Publishers share one name (their outputs are the same records); other replicas are
    # named after their node.
    publisher = "publisher" in roles
    execution = [
        "execution",
        "run",
        *data,
        "--group-id",
        "lattice-execution" if publisher else f"lattice-execution-{name}",
        "--state-dir",
        str(s.data_dir / "lattice-execution"),
        "--checkpoint-key-file",
        str(key_file),
        "--checkpoint-every",
        str(s.checkpoint_every),
        "--snapshot-every",
        str(s.snapshot_every),
        *genesis,
    ]
    execution += ["--active-group", PUBLISHER_GROUP] if publisher else ["--no-publish"]
    children = [ChildSpec("execution", tuple(execution))]
    if "dag" in roles:
        state = ("--state-dir", str(s.data_dir / "lattice-dag"))
        children.append(ChildSpec("dag", ("dag", "run", *dag, *state, "--active-group", DAG_GROUP)))
    if "proposer" in roles:
        args = ("proposer", "--key-file", str(key_file), "--block-interval", str(s.block_interval))
        children.append(ChildSpec("proposer", (*args, *dag), kind="proposer"))
    if "market" in roles:
        children.append(
            ChildSpec("matcher", ("matcher", "run", *data, "--active-group", MATCHER_GROUP))
        )
        # Model blocks come through the node's own gateway.
        own = _own_gateway(s)
        verifier = ("verifier", "run", *data, "--rpc", own, "--active-group", VERIFIER_GROUP)
        children.append(ChildSpec("verifier", verifier))
    if "analytics" in roles:
        children.append(ChildSpec("analytics", ("analytics", "run", *data)))
    # Every node runs an IPFS peer, found by the others through their gateways (`--peers`).
    ipfs = ["ipfs", "run", "--data-dir", str(s.data_dir), "--listen", s.host]
    ipfs += ["--gateways", s.peers] if s.peers else []
    children.append(ChildSpec("ipfs", tuple(ipfs)))
    return children


class Node:
    def __init__(self, settings: Settings, out: TextIO = sys.stdout) -> None:
        if not settings.kafka:
            raise SettingsError(
                "a node needs the network's Kafka: --kafka HOST:PORT[,HOST:PORT...] "
                "(or kafka in the settings file)"
            )
        self.settings = settings
        self.out = out
        self.name = settings.node_name or socket.gethostname()
        self.roles = parse_roles(settings.roles)
        if "worker" in self.roles and settings.worker_key_file is None:
            raise SettingsError(
                "the worker role needs --worker-key-file FILE (or worker_key_file in the "
                "settings file): a funded key, since the worker stakes and is paid"
            )
        self.signers = parse_signers(settings.signers)
        self.host: Host | None = None

    def say(self, label: str, text: str) -> None:
        print(f"  {label:<11} {text}", file=self.out, flush=True)

    def run(self) -> None:
        s = self.settings
        with locked(s.data_dir, "node"):
            check_port(s.host, s.rpc_port, "--rpc-port")
            check_port(s.host, s.ws_port, "--ws-port")
            bootstrap = str(s.kafka)
            print(f"lattice node {self.name}", file=self.out, flush=True)
            probe(bootstrap, extra=dict(s.kafka_config))
            ensure_topics(bootstrap, TOPICS, replication=s.replication_factor, extra=s.kafka_config)
            network = join(bootstrap, ours(load_genesis(s), rules_of(s), self.name))
            key_file = s.data_dir / "node.key"
            address = address_of(node_key(key_file))
            self.say("kafka", bootstrap)
            genesis = f"0x{network.genesis_hash.hex()}"
            self.say("network", f"chain id {network.chain_id}, genesis {genesis}")
            self.say("node key", f"0x{address.hex()} ({key_file})")
            roles = ", ".join(sorted(self.roles)) or "none"
            self.say("roles", f"gateway and execution replica; {roles}")
            signers = self.signers or frozenset([address])
            state_dir = s.data_dir / "lattice-execution"
            adopted = self._snapshot(state_dir, network, signers - {address})
            host = self.host = Host(s, bootstrap, self.out)
            try:
                host.start(node_children(s, self.name, self.roles, bootstrap, key_file))
                self.say("signers", f"{len(signers)} (a majority of them finalises)")
                app = host.gateway(state_dir, signers)
                if adopted is not None:
                    self._confirm(host, adopted, state_dir, address)
                uvloop.run(host.serve(app, self._ready))
            finally:
                endpoints.remove(s.data_dir)
                host.stop()
                print("stopped", file=self.out, flush=True)

    def _snapshot(
        self, state_dir: Path, network: NetworkGenesis, others: frozenset[bytes]
    ) -> snapshot.Adopted | None:
        """With no state yet and `--snapshot`, adopt one (checked); a snapshot adopted
        before and not confirmed yet. Both wait for `_confirm` before serving."""
        s = self.settings
        adopted = snapshot.pending(state_dir)
        if s.snapshot and (state_dir / "rocksdb" / "CURRENT").exists():
            self.say("snapshot", "not taken: this node has a state of its own (it goes on from it)")
        elif s.snapshot:
            if not others:
                raise HostError(
                    "--snapshot needs the network's checkpoint signers (--signers ADDR,...) "
                    "to check it against: this node's own signature cannot vouch for it"
                )
            self.say("snapshot", f"from {s.snapshot}")
            adopted = snapshot.adopt(s, state_dir, network, lambda t: self.say("snapshot", t))
        return adopted

    def _confirm(self, host: Host, adopted: snapshot.Adopted, state_dir: Path, own: bytes) -> None:
        checkpoints = next(f for f in host.followers if isinstance(f, CheckpointView))
        assert host.view is not None
        height = snapshot.confirm(
            adopted,
            state_dir,
            host.view,
            checkpoints,
            own,
            lambda t: self.say("snapshot", t),
            host.stopping.is_set,
        )
        self.say(
            "snapshot",
            f"confirmed: at block {height} this node's block hash and state root are the "
            "ones a quorum of the other nodes signed",
        )

    def _ready(self) -> None:
        host = self.host
        assert host is not None
        s = self.settings
        endpoints.Endpoints(
            pid=os.getpid(),
            kafka=host.bootstrap,
            embedded=False,
            rpc=host.rpc,
            ws=host.ws,
            chain_id=s.chain_id,
            metrics=host.metrics(),
        ).write(s.data_dir)
        self.say("JSON-RPC", f"{host.rpc}  (REST {host.rpc}/v1, dashboard {host.rpc}/)")
        self.say("WebSocket", host.ws)
        workers = node_workers(s, self.roles, host.bootstrap)
        if workers:
            host.start(workers)
            self.say("worker", f"local, key {s.worker_key_file} (registers through {host.rpc})")
        print("ready; Ctrl-C to stop", file=self.out, flush=True)


def run_node(settings: Settings, out: TextIO) -> None:
    """`lattice node`; errors a user can act on become HostError."""
    try:
        Node(settings, out).run()
    except (NetworkError, snapshot.SnapshotError) as exc:
        raise HostError(str(exc)) from None
