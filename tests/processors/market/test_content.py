from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from processors.market.content import Blockstore, ContentError, chunk, cid_of, digest_of, verify


def test_cid_matches_ipfs_for_a_raw_leaf() -> None:
    # `ipfs add --cid-version 1 --raw-leaves` of the 11 bytes "hello world".
    assert cid_of(b"hello world") == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    assert digest_of(cid_of(b"x")) == hashlib.sha256(b"x").digest()


@pytest.mark.parametrize(
    "bad",
    ["", "Qmfoo", "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5", "b" + "a" * 58],
)
def test_malformed_cids_are_refused(bad: str) -> None:
    with pytest.raises(ContentError):
        digest_of(bad)


def test_verify_refuses_other_bytes() -> None:
    with pytest.raises(ContentError, match="does not match"):
        verify(cid_of(b"a"), b"b")


def test_chunks_reassemble_and_are_addressed_each() -> None:
    data = bytes(range(256)) * 10
    parts = chunk(data, size=1000)
    assert [c.size for c, _ in parts] == [1000, 1000, 560]
    assert b"".join(p for _, p in parts) == data
    assert all(c.cid == cid_of(p) for c, p in parts)


def test_blockstore_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    store = Blockstore(tmp_path)
    chunks = store.put_file(b"z" * 3_000_000)
    assert len(chunks) == 3 and store.get_file(chunks) == b"z" * 3_000_000
    store.path(chunks[0].cid).write_bytes(b"tampered")
    with pytest.raises(ContentError):
        store.get(chunks[0].cid)
    with pytest.raises(KeyError):
        store.get(cid_of(b"never stored"))
