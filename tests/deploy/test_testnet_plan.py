"""The testnet's plan (pure) and its refusals: names that fit Linux's interface names,
one address each, the roles spread over the nodes, and a clear no without root."""

from __future__ import annotations

import pytest

import deploy.testnet as testnet
from deploy.host import HostError
from deploy.node import parse_roles
from deploy.testnet import node_roles, plan


def test_every_host_has_its_own_namespace_link_and_address() -> None:
    made = plan(10, "lt12345", "10.201.7.0/24")
    hosts = [made.broker, made.worker, *made.nodes]
    assert len(made.nodes) == 10
    assert made.gateway_ip == "10.201.7.1" and made.prefix_len == 24
    assert len({h.ip for h in hosts}) == len({h.netns for h in hosts}) == len(hosts)
    assert len({h.link for h in hosts}) == len(hosts)
    assert all(len(h.link) <= 15 and len(h.link + "p") <= 15 for h in hosts)
    assert len(made.bridge) <= 15
    assert made.gateway_ip not in {h.ip for h in hosts}
    with pytest.raises(ValueError, match="too small"):
        plan(10, "lt1", "10.0.0.0/29")


def test_two_nodes_share_the_once_per_network_roles() -> None:
    roles = [parse_roles(node_roles(i)) for i in range(4)]
    assert all("proposer" in r for r in roles)
    shared = [("dag" in r, "publisher" in r, "market" in r) for r in roles]
    assert shared == [(True, True, True)] * 2 + [(False, False, False)] * 2
    assert sum("analytics" in r for r in roles) == 1


def test_without_root_it_refuses(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setattr(testnet.os, "geteuid", lambda: 1000)
    with pytest.raises(HostError, match="run it as root"):
        testnet.Testnet(4, tmp_path)  # type: ignore[arg-type]
