"""Registered models pinned on the node's IPFS peer, in the background.

Every gateway folds `lattice.models`; each manifest it meets is pinned on its node's peer
(`processors.market.ipfs.pin_model`): the blocks this node holds are written into the peer's
repo first (with each file's UnixFS blocks, made from the file), and the peer fetches the
rest from the other nodes' peers as it pins. A manifest pinned is remembered in
`<data-dir>/ipfs/pinned/` so that a restart does not hash every model again; one that fails
(the peer not up yet, or a block nobody serves yet) is tried again a little later.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from processors.compute.runtime import BlockSource
from processors.market.content import Blockstore
from processors.market.ipfs import IpfsError, files_of, local_peer, pin_model, repo_of

log = logging.getLogger(__name__)

RETRY_S = 2.0
#: A pin fetches what the peer lacks from the others: allow for a large model.
PIN_TIMEOUT_S = 600.0


class Pinner:
    def __init__(self, home: Path, store: Blockstore, source: BlockSource) -> None:
        self.home, self.store, self.source = home, store, source
        self.done = home / "pinned"
        self.todo: queue.Queue[str] = queue.Queue()
        self.pinned = 0
        threading.Thread(target=self._run, name="ipfs-pinner", daemon=True).start()

    def offer(self, manifest_cid: str) -> None:
        self.todo.put(manifest_cid)

    def _run(self) -> None:
        while True:
            cid = self.todo.get()
            if (self.done / cid).exists():
                continue
            try:
                if not self.pin(cid):
                    raise IpfsError("no IPFS peer answers for this node yet")
            except Exception as exc:  # a pinner that dies pins nothing more: try again later
                log.debug("pinning model %s later: %s", cid, exc)
                threading.Timer(RETRY_S, self.todo.put, args=(cid,)).start()

    def pin(self, manifest_cid: str) -> bool:
        """Pin one model; False when the node has no peer (yet)."""
        client, repo = local_peer(self.home, PIN_TIMEOUT_S), repo_of(self.home)
        if client is None or repo is None:
            return False
        client.id()  # a stale peer.json (a peer killed) fails here, before any hashing
        started = time.monotonic()
        document: dict[str, Any] = json.loads(self.source.get(manifest_cid))
        for cid in self._blocks(manifest_cid, document):
            if self.store.has(cid):
                repo.put_cid(cid, self.store.get(cid))
        count = pin_model(client, repo, manifest_cid, document, self._reads)
        self.done.mkdir(parents=True, exist_ok=True)
        (self.done / manifest_cid).touch()
        self.pinned += 1
        log.info(
            "pinned model %s on the IPFS peer (%d CIDs, %.1f s)",
            manifest_cid,
            count,
            time.monotonic() - started,
        )
        return True

    @staticmethod
    def _blocks(manifest_cid: str, document: dict[str, Any]) -> list[str]:
        blocks = [manifest_cid]
        for part in files_of(document).values():
            blocks += [part["cid"], *(c["cid"] for c in part["chunks"])]
        return blocks

    def _reads(self, part: dict[str, Any]) -> Iterator[bytes] | None:
        """A file's bytes a chunk at a time, when this node holds all of them."""
        chunks = [str(c["cid"]) for c in part["chunks"]]
        if not all(self.store.has(c) for c in chunks):
            return None
        return (self.store.get(c) for c in chunks)
