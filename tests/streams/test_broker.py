"""Ports for listeners that start later (the devnet's gateway and metrics endpoints)."""

from __future__ import annotations

import socket

from streams.broker import _ephemeral_ports, free_port


def test_free_ports_are_bindable_and_never_ones_outgoing_connections_take() -> None:
    ephemeral = _ephemeral_ports()
    ports = {free_port() for _ in range(50)}
    assert not any(port in ephemeral for port in ports)
    for port in list(ports)[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
