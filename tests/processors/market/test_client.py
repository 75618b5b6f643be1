"""The participants' HTTP client against a real local HTTP server: a gateway's 429 is
waited out as its Retry-After asks, other refusals are not retried."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from processors.market import client
from processors.market.client import RpcFailure, http_post


class Refusing(BaseHTTPRequestHandler):
    """Answers the first `refusals` POSTs with `status`, then stores the body."""

    refusals = 0
    status = 429
    retry_after = "0"
    #: Refuse before reading the body, and close (as `gateway.guard` does).
    early = False
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        cls = type(self)
        if cls.early and cls.refusals > 0:
            cls.refusals -= 1
            self.send_response(cls.status)
            self.send_header("Retry-After", cls.retry_after)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            return
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if cls.refusals > 0:
            cls.refusals -= 1
            self.send_response(cls.status)
            self.send_header("Retry-After", cls.retry_after)
            self.end_headers()
            self.wfile.write(b'{"error": "slow down"}')
            return
        cls.bodies.append(body)
        answer = json.dumps({"stored": len(body), "cid": self.headers.get("X-CID")}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Refusing.bodies, Refusing.early = [], False
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_429_is_waited_out_and_the_body_sent_once(server: str) -> None:
    Refusing.refusals, Refusing.status = 3, 429
    answer = http_post(f"{server}/v1/content", b"block", headers={"X-CID": "bafy"})
    assert answer == {"stored": 5, "cid": "bafy"}
    assert Refusing.bodies == [b"block"] and Refusing.refusals == 0


def test_other_refusals_and_long_waits_are_errors(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    Refusing.refusals, Refusing.status = 1, 413
    with pytest.raises(RpcFailure, match="413"):
        http_post(f"{server}/v1/content", b"block")
    monkeypatch.setattr(client, "RATE_LIMITED_WAIT_S", 1.0)
    Refusing.refusals, Refusing.status, Refusing.retry_after = 5, 429, "2"
    with pytest.raises(RpcFailure, match="429"):
        http_post(f"{server}/v1/content", b"block")
    assert Refusing.bodies == []


def test_a_refusal_before_the_body_is_read_is_waited_out_for_idempotent_posts(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large block refused before a byte of it is read: the client, still sending, finds
    the connection cut (no 429 to read); a content upload is sent again, anything else
    fails."""
    monkeypatch.setattr(client, "CUT_RETRY_S", 0.05)
    block = bytes(16 << 20)  # far more than the sockets' buffers hold
    Refusing.early, Refusing.refusals = True, 1
    with pytest.raises(RpcFailure):
        http_post(f"{server}/v1/models", block)
    Refusing.refusals = 2
    answer = http_post(f"{server}/v1/content", block, headers={"X-CID": "bafy"}, idempotent=True)
    assert answer == {"stored": len(block), "cid": "bafy"}
    assert Refusing.refusals == 0 and Refusing.bodies == [block]
