"""`lattice devnet`: the whole network on one machine.

Start-up: lock the data directory, start the embedded broker (unless `--kafka`), create
the catalogue's topics, re-seed the broker from the archive, start archiving, then the
processors and the gateway (`deploy.host`); write `devnet.json` and print the endpoints.

Shutdown (Ctrl-C or SIGTERM), in the order that loses nothing: stop accepting requests,
flush the producer, stop processors, let the archiver catch up with every partition's
end, stop the broker, remove `devnet.json`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TextIO

import uvloop

from deploy import endpoints
from deploy.host import ChildSpec, Host, HostError, check_port, locked
from deploy.log import Log
from deploy.network import NetworkError, join, load_genesis, ours, rules_of
from deploy.node import DAG_GROUP, PUBLISHER_GROUP
from processors.execution.checkpoints import address_of, replica_key
from streams.settings import Settings

log = logging.getLogger(__name__)


class DevnetError(RuntimeError):
    """The devnet cannot start or had to stop."""


def devnet_children(s: Settings, bootstrap: str) -> list[ChildSpec]:
    """The devnet's processors and proposers: one of each network role, `replicas`
    execution replicas (replica 0 publishes, all sign checkpoints with the well-known
    replica keys) and `proposers` proposers with the well-known devnet keys."""
    common = (
        "--kafka",
        bootstrap,
        "--data-dir",
        str(s.data_dir),
        "--ghostdag-k",
        str(s.ghostdag_k),
        "--finality-depth",
        str(s.finality_depth),
    )
    # The node's IPFS peer first: the gateway mirrors its blocks into its repo.
    children = [ChildSpec("ipfs", ("ipfs", "run", "--data-dir", str(s.data_dir)))]
    # The network-once roles run as standby sets, so nodes may join them (`deploy.node`).
    children.append(ChildSpec("dag", ("dag", "run", *common, "--active-group", DAG_GROUP)))
    genesis = ("--genesis", str(s.genesis_file)) if s.genesis_file else ()
    for index in range(s.replicas):
        group = "lattice-execution" if index == 0 else f"lattice-execution-{index}"
        args = ["execution", "run", "--kafka", bootstrap, "--data-dir", str(s.data_dir)]
        args += ["--group-id", group, "--replica-index", str(index)]
        args += ["--checkpoint-every", str(s.checkpoint_every), *genesis]
        args += ["--snapshot-every", str(s.snapshot_every)]
        if index:
            args.append("--no-publish")  # replica 0 publishes the ledger's events
        else:
            args += ["--active-group", PUBLISHER_GROUP]
        children.append(ChildSpec(group.removeprefix("lattice-"), tuple(args)))
    for index in range(s.proposers):
        args = ["proposer", "--devnet-index", str(index)]
        args += ["--block-interval", str(s.block_interval), *common]
        children.append(ChildSpec(f"proposer-{index}", tuple(args), kind="proposer"))
    market = ("--kafka", bootstrap, "--data-dir", str(s.data_dir))
    for role in ("matcher", "verifier", "analytics"):
        children.append(ChildSpec(role, (role, "run", *market)))
    return children


def devnet_workers(s: Settings, bootstrap: str, rpc: str) -> list[ChildSpec]:
    common = ("worker", "--kafka", bootstrap, "--data-dir", str(s.data_dir), "--rpc", rpc)
    return [
        ChildSpec(f"worker-{index}", (*common, "--devnet-index", str(index)), kind="worker")
        for index in range(s.workers)
    ]


class Devnet:
    def __init__(self, settings: Settings, out: TextIO = sys.stdout) -> None:
        self.settings = settings
        self.out = out
        self.log = Log(settings, self.say)
        self.host: Host | None = None
        self.stopping = threading.Event()
        self.runs = 0

    def say(self, label: str, text: str) -> None:
        print(f"  {label:<11} {text}", file=self.out, flush=True)

    def run(self) -> None:
        s = self.settings
        try:
            with locked(s.data_dir, "devnet"):
                while True:
                    try:
                        self._run()
                        return
                    except HostError as exc:
                        if not self.log.broker_died():
                            raise
                        # Everything acknowledged is in the archive: start again on it.
                        # Every process goes (each holds state read from the dead
                        # broker); clients see the ports close and open again.
                        self.say("kafka", f"{exc}; restarting the devnet on its archive")
                        self.log = Log(s, self.say)
        except (HostError, NetworkError) as exc:
            raise DevnetError(str(exc)) from None

    def _run(self) -> None:
        s = self.settings
        check_port(s.host, s.rpc_port, "--rpc-port")
        check_port(s.host, s.ws_port, "--ws-port")
        self.runs += 1
        if self.runs == 1:
            print("lattice devnet", file=self.out, flush=True)
            self.say("data dir", str(s.data_dir))
        try:
            bootstrap = self.log.start()
            join(bootstrap, ours(load_genesis(s), rules_of(s), "devnet"))
            host = self.host = Host(s, bootstrap, self.out)
            self.stopping = host.stopping
            host.start(devnet_children(s, bootstrap))
            self.say(
                "processors",
                f"analytics (DuckDB), matcher, verifier, execution (py-evm), dag ordering "
                f"(K={s.ghostdag_k}, finality depth {s.finality_depth}), "
                f"{s.proposers} proposers every {s.block_interval}s; "
                f"logs in {s.data_dir / 'logs'}",
            )
            signers = frozenset(address_of(replica_key(i)) for i in range(s.replicas))
            archiver = self.log.archiver
            app = host.gateway(
                s.data_dir / "lattice-execution",
                signers,
                on_acknowledged=archiver.offer if archiver is not None else None,
                dev_accounts=True,  # as anvil and Hardhat: a devnet signs for its accounts
            )
            # uvloop: the gateway's event loop is on every request's path.
            uvloop.run(host.serve(app, self._ready, self.log.checks()))
        finally:
            self._stop()

    def _ready(self) -> None:
        s = self.settings
        host = self.host
        assert host is not None
        rpc = host.rpc
        host.start(devnet_workers(s, host.bootstrap, rpc))
        self.say("workers", f"{s.workers} local (OpenAI-compatible API at {rpc}/v1)")
        endpoints.Endpoints(
            pid=os.getpid(),
            kafka=host.bootstrap,
            embedded=s.embedded,
            rpc=rpc,
            ws=host.ws,
            chain_id=s.chain_id,
            metrics=host.metrics(),
        ).write(s.data_dir)
        self.say("REST", f"{rpc}/v1  (POST /v1/transactions, GET /health)")
        self.say("JSON-RPC", rpc)
        self.say("WebSocket", host.ws)
        self.say("dashboard", f"{rpc}/  (metrics: {rpc}/metrics; processors' in devnet.json)")
        self.say("chain id", str(s.chain_id))
        print("ready; Ctrl-C to stop", file=self.out, flush=True)
        threading.Thread(target=self._dev_api_key, args=(rpc,), daemon=True).start()

    def _dev_api_key(self, rpc: str) -> None:
        """Give dev account 0 a deposit and an API key, once per data directory."""
        from gateway.market import new_api_key
        from processors.execution.genesis import DEV_KEYS, ETHER, JOB_MARKET, address_of
        from processors.market.chain import authorise_call, deposit_call
        from processors.market.client import RpcFailure, send_call

        path = self.settings.data_dir / "api-key"
        if path.exists():
            self.say("api key", f"{path.read_text().strip()} (dev account 0, {path})")
            return
        account = bytes.fromhex(DEV_KEYS[0][2:])
        delegate = os.urandom(32)
        chain = self.settings.chain_id
        try:
            send_call(
                rpc, chain, account, JOB_MARKET, deposit_call(), value=100 * ETHER, wait_s=None
            )
            send_call(
                rpc, chain, account, JOB_MARKET, authorise_call(address_of(delegate)), wait_s=120
            )
        except RpcFailure as exc:
            if self.stopping.is_set():  # stopped before the set-up finished: next start does it
                log.info("dev API key not set up: the devnet stopped first")
            else:
                log.error("could not set up the dev API key: %s", exc)
            return
        key = new_api_key(delegate)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(key + "\n")
        os.replace(tmp, path)
        self.say("api key", f"{key} (dev account 0, 100 ETH deposit; saved in {path})")

    def _stop(self) -> None:
        endpoints.remove(self.settings.data_dir)
        broker = self.log.broker
        if self.host is not None:
            self.host.stop(log_lost=broker is not None and not broker.running)
        self.log.stop()
        print("stopped", file=self.out, flush=True)
