"""Ports for listeners that start later (the devnet's gateway and metrics endpoints)."""

from __future__ import annotations

import socket

import pytest

from streams import broker
from streams.broker import _ephemeral_ports, claim_ports, free_port


def test_free_ports_are_bindable_and_never_ones_outgoing_connections_take() -> None:
    ephemeral = _ephemeral_ports()
    ports = {free_port() for _ in range(50)}
    assert not any(port in ephemeral for port in ports)
    for port in list(ports)[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_is_named_once_and_never_one_the_process_claimed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fifty ports: forty picks at random from them would repeat without the memory (a
    # devnet names every child's port before any child opens one).
    monkeypatch.setattr(broker, "LISTEN_PORTS", range(21_000, 21_050))
    monkeypatch.setattr(broker, "_named", set())
    claim_ports(21_000, 21_001)  # a gateway's ports, opened after its children start
    named = [free_port() for _ in range(40)]
    assert len(set(named)) == 40
    assert all(21_002 <= port < 21_050 for port in named)
