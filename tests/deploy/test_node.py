"""A node's plan (pure): roles and signers parsed from settings, the children each role
adds, and the network check's verdicts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from deploy.network import mismatch
from deploy.node import Node, node_children, node_key, node_workers, parse_roles, parse_signers
from schemas.events import NetworkGenesis
from streams.settings import Settings, SettingsError

NETWORK = NetworkGenesis(chain_id=27182, genesis_hash=b"\1" * 32, state_root=b"\2" * 32, node="a")


def test_roles_and_signers_are_checked() -> None:
    assert parse_roles(" proposer, dag ,") == {"proposer", "dag"}
    with pytest.raises(SettingsError, match=r"unknown role.*miner"):
        parse_roles("proposer,miner")
    assert parse_signers("0x" + "ab" * 20 + ",") == {bytes.fromhex("ab" * 20)}
    with pytest.raises(SettingsError, match="not a 20-byte"):
        parse_signers("0x1234")


def test_every_node_runs_its_own_replica_and_roles_add_children(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, kafka="k:9092")
    key = tmp_path / "node.key"
    bare = node_children(s, "n1", (), "k:9092", key)
    assert [c.name for c in bare] == ["execution", "ipfs"]
    execution = bare[0].args
    assert "--no-publish" in execution and str(key) in execution
    assert str(tmp_path / "lattice-execution") in execution
    assert "lattice-execution-n1" in execution
    full = node_children(s, "n1", ROLES_ALL, "k:9092", key)
    assert [c.name for c in full] == [
        "execution",
        "dag",
        "proposer",
        "matcher",
        "verifier",
        "analytics",
        "ipfs",
    ]
    assert "--no-publish" not in full[0].args
    assert "lattice-publisher-active" in full[0].args and "lattice-execution" in full[0].args
    assert "lattice-dag-active" in full[1].args
    assert full[2].kind == "proposer" and "--key-file" in full[2].args
    assert "lattice-matcher-active" in full[3].args
    verifier = full[4].args
    assert "lattice-verifier-active" in verifier
    assert verifier[verifier.index("--rpc") + 1] == f"http://127.0.0.1:{s.rpc_port}"
    ipfs = full[6].args
    assert ipfs[ipfs.index("--listen") + 1] == s.host and "--gateways" not in ipfs
    peered = Settings(data_dir=tmp_path, kafka="k:9092", peers="http://10.0.0.2:8545")
    ipfs = node_children(peered, "n1", (), "k:9092", key)[1].args
    assert ipfs[ipfs.index("--gateways") + 1] == "http://10.0.0.2:8545"


ROLES_ALL = ("proposer", "dag", "market", "publisher", "analytics")


def test_the_node_key_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = node_key(path)
    assert node_key(path).secret == first.secret
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("nonsense")
    with pytest.raises(SettingsError, match="not a secp256k1 private key"):
        node_key(path)


def test_another_chain_or_genesis_is_named() -> None:
    assert mismatch(NETWORK, NETWORK) is None
    other_chain = dataclasses.replace(NETWORK, chain_id=5, node="b")
    assert "chain id is 5 but the network's is 27182 (set by node 'a')" in str(
        mismatch(other_chain, NETWORK)
    )
    other_genesis = dataclasses.replace(NETWORK, genesis_hash=b"\3" * 32, node="b")
    problem = str(mismatch(other_genesis, NETWORK))
    assert "genesis block is 0x0303" in problem and "--genesis FILE" in problem


def test_the_worker_role_runs_a_worker_on_its_funded_key(tmp_path: Path) -> None:
    key = tmp_path / "w.key"
    s = Settings(data_dir=tmp_path, kafka="k:9092", worker_key_file=key, rpc_port=9545)
    assert node_workers(s, {"proposer"}, "k:9092") == []
    (worker,) = node_workers(s, {"worker"}, "k:9092")
    assert worker.kind == "worker" and str(key) in worker.args
    assert worker.args[worker.args.index("--rpc") + 1] == "http://127.0.0.1:9545"
    bare = Settings(data_dir=tmp_path, kafka="k:9092", roles="worker")
    with pytest.raises(SettingsError, match="needs --worker-key-file"):
        Node(bare)
