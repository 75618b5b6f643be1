"""Every operation of the served OpenAPI document, any input: never a 5xx, and every
answer fits its own documented status, media type, headers and schema. Property-based
(schemathesis over hypothesis) with a fixed seed and a bounded count, against the real
app: a ledger py-evm executed into RocksDB, the market follower on the embedded broker
with nodes, a model and jobs folded into it, and a producer to the broker.

Valid input (positive mode) and input that breaks the schema (negative mode) are both
sent, each with and without an API key that the ledger's JobMarket authorises (with no
deposit: a job is refused, 402, before it could wait for a node).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import schemathesis
from eth_utils.address import to_checksum_address
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.chainview import ChainView
from gateway.intake import TX_SUBMITTED
from gateway.market import FOLLOWED, MarketService, new_api_key
from processors.execution.genesis import JOB_MARKET, address_of
from processors.market.chain import authorise_call
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer
from streams.settings import CHAIN_ID, Settings
from tests import market_events
from tests.gateway.test_chainview import Execution

pytestmark = pytest.mark.broker

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: Examples per operation and mode: the whole run stays well under a minute on 2 cores.
EXAMPLES = int(os.environ.get("LATTICE_SCHEMATHESIS_EXAMPLES", "25"))
DELEGATE = b"\x5e" * 32
NODE = b"\x4e" * 32


def _fill_market(market: MarketService) -> None:
    """Records of every kind a listing shows, folded as the follower folds the log's."""
    market.apply(market_events.registration(NODE, price=7))
    market.apply(market_events.heartbeat(NODE, timestamp_ms=1_000))
    market.apply(market_events.manifest("tiny", "bafytiny"))
    outputs = [b'{"text": "hi", "finish_reason": "stop"}', b"\xff not JSON", None]
    for n, output in enumerate(outputs):
        job = bytes([n + 1]) * 32
        market.apply(market_events.submitted(job, submitted_at_ms=1_000 + n))
        market.apply(market_events.assigned(job, 0, [address_of(NODE)]))
        market.apply(market_events.result(job, NODE, output=output))
        market.apply(market_events.settled(job, bytes([n + 9]) * 32))


@pytest.fixture(scope="module")
def app(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data: Path = tmp_path_factory.mktemp("openapi")
    ensure_topics(broker.bootstrap, [TX_SUBMITTED, *FOLLOWED])
    execution = Execution(data / "store")
    execution.block(1, to=to_checksum_address(b"\x22" * 20), value=5)
    authorise = "0x" + authorise_call(address_of(DELEGATE)).hex()
    execution.block(2, to=to_checksum_address(JOB_MARKET), data=authorise)
    view = ChainView(data / "store", CHAIN_ID)
    settings_ = Settings(data_dir=data)
    market = MarketService(settings_, broker.bootstrap, CHAIN_ID)
    _fill_market(market)
    producer = Producer(broker.bootstrap)
    yield create_app(settings_, producer, view, market=market)
    market.close()
    producer.close()
    view.close()
    execution.state.close()


def _operations(app: Any) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def _breakable(operation: Any) -> bool:
    """Whether input can break the operation's schema at all: parameters, or a JSON body
    (a content block is any bytes)."""
    parameters = [*operation.path_parameters, *operation.query]
    return bool(parameters) or any("json" in body.media_type for body in operation.body)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_within_its_schema(app: Any, mode: GenerationMode) -> None:
    keyed = {"Authorization": f"Bearer {new_api_key(DELEGATE)}"}
    failures = []
    operations = _operations(app)
    assert len(operations) >= 20, [op.label for op in operations]
    if mode == GenerationMode.NEGATIVE:
        operations = [op for op in operations if _breakable(op)]
    for operation in operations:

        @seed(13)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode), with_key=st.booleans())
        def check(case: Any, with_key: bool) -> None:
            case.call_and_validate(headers=keyed if with_key else None, checks=CHECKS)

        try:
            check()
        except Exception as exc:  # every operation's findings, not just the first's
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_the_openai_client_reads_the_typed_errors(app: Any) -> None:
    """The official client, over the same app: the market's 4xx are its exceptions."""
    with TestClient(app) as http:
        client = openai.OpenAI(
            base_url="http://testserver/v1",
            api_key=new_api_key(DELEGATE),
            http_client=http,
            max_retries=0,
        )
        user = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="tiny", messages=user, temperature=0.2)
        assert refused.value.status_code == 402  # authorised, but nothing deposited
        assert refused.value.code == "insufficient_deposit"
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="tiny", messages=[])
        assert bad.value.code == "invalid_request_error"
        assert [m.id for m in client.models.list()] == ["tiny"]


def test_a_block_number_in_other_digits_is_a_400(app: Any) -> None:
    """ "²" is a digit to str.isdigit but no number to int() (it was a 500)."""
    with TestClient(app) as http:
        answer = http.get("/v1/blocks/²")
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "bad_request"
