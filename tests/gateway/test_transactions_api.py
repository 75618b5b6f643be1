"""POST /v1/transactions against the real embedded broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.intake import TX_SUBMITTED
from schemas.codec import default_codec
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import DeliveryError, Producer, Reader, from_beginning
from streams.settings import CHAIN_ID, Settings
from tests.txs import ACCOUNT, signed

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def client(broker: EmbeddedBroker) -> Iterator[TestClient]:
    ensure_topics(broker.bootstrap, [TX_SUBMITTED])
    producer = Producer(broker.bootstrap)
    with TestClient(create_app(Settings(max_tx_bytes=4096), producer)) as test_client:
        yield test_client
    producer.close()


def submitted(broker: EmbeddedBroker) -> list[dict[str, object]]:
    """The records on the topic as they are on the wire (Avro values)."""
    reader = Reader(broker.bootstrap)
    try:
        parts = reader.partitions(TX_SUBMITTED.name)
        messages = reader.read(from_beginning(TX_SUBMITTED.name, parts))
        return [reader.codec.decode(m.value()).record for m in messages]
    finally:
        reader.close()


def test_health(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["chain_id"] == CHAIN_ID


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_valid_transactions_are_produced_keyed_by_sender(
    client: TestClient, broker: EmbeddedBroker, kind: int
) -> None:
    raw = signed(kind, nonce=100 + kind)
    before = len(submitted(broker))
    response = client.post("/v1/transactions", json="0x" + raw.hex())
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["from"] == ACCOUNT.address.lower()
    assert body["type"] == kind
    records = submitted(broker)
    assert len(records) == before + 1
    record = next(r for r in records if r["raw"] == raw)
    assert record["sender"] == bytes.fromhex(ACCOUNT.address[2:])
    assert record["nonce"] == 100 + kind and record["tx_type"] == kind
    # Keyed by sender: the same partition as every other transaction of this sender.
    reader = Reader(broker.bootstrap)
    try:
        messages = list(
            reader.read(from_beginning(TX_SUBMITTED.name, reader.partitions(TX_SUBMITTED.name)))
        )
    finally:
        reader.close()
    mine = {m.partition() for m in messages if m.key() == ACCOUNT.address.lower().encode()}
    assert len(mine) == 1


def test_body_forms(client: TestClient) -> None:
    for body in (
        {"json": {"raw": "0x" + signed(nonce=7).hex()}},
        {"content": "0x" + signed(nonce=8).hex(), "headers": {"content-type": "text/plain"}},
    ):
        assert client.post("/v1/transactions", **body).status_code == 202  # type: ignore[arg-type]


BAD = {
    "bad_signature": lambda: "0x" + signed()[:-32].hex() + "ff" * 32,
    "wrong_chain_id": lambda: "0x" + signed(chainId=1).hex(),
    "truncated": lambda: "0x" + signed()[:-10].hex(),
    "not_hex": lambda: "0xnothex",
    "empty": lambda: "0x",
    "unsupported_type": lambda: "0x05" + signed()[1:].hex(),
}


@pytest.mark.parametrize("code", sorted(BAD))
def test_bad_transactions_get_their_own_error_and_produce_nothing(
    client: TestClient, broker: EmbeddedBroker, code: str
) -> None:
    before = len(submitted(broker))
    response = client.post("/v1/transactions", json=BAD[code]())
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert len(submitted(broker)) == before


def test_oversize_is_413_and_produces_nothing(client: TestClient, broker: EmbeddedBroker) -> None:
    before = len(submitted(broker))
    big = signed(data="0x" + "01" * 5000, gas=2_000_000)
    response = client.post("/v1/transactions", json="0x" + big.hex())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "oversize"
    huge = client.post("/v1/transactions", content="0x" + "00" * 100_000)
    assert huge.status_code == 413
    assert len(submitted(broker)) == before


def test_bad_json_and_wrong_shape(client: TestClient) -> None:
    response = client.post(
        "/v1/transactions", content="{nope", headers={"content-type": "application/json"}
    )
    assert response.json()["error"]["code"] == "bad_json"
    assert client.post("/v1/transactions", json={"tx": 1}).json()["error"]["code"] == "not_hex"


def test_unreachable_log_is_503_not_a_hang() -> None:
    producer = Producer("127.0.0.1:1", config={"message.timeout.ms": 500, "log_level": 0})
    with TestClient(create_app(Settings(), producer)) as offline:
        response = offline.post("/v1/transactions", json="0x" + signed().hex())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    with pytest.raises(DeliveryError, match="timed out"):
        producer.close(timeout=1)  # the failure stays on record for whoever flushes


def test_produced_records_decode_with_the_shared_codec(broker: EmbeddedBroker) -> None:
    assert all(isinstance(r["hash"], bytes) for r in submitted(broker))
    assert default_codec().schema(TX_SUBMITTED.schema)
