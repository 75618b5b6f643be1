"""Every JSON-RPC method, any parameters: a result or a spec error code, never a crash (a
crash is an HTTP 500 at the gateway). Property-based, with a fixed seed and a bounded
count, over a real executed ledger (py-evm, RocksDB)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from gateway.chainview import ChainView
from gateway.intake import TransactionIntake
from gateway.jsonrpc import CODES, JsonRpc, Methods, RpcError
from gateway.ledger import LedgerQueries
from processors.execution.transactions import ChainRules
from streams.kafka import Delivered
from streams.settings import CHAIN_ID
from tests.gateway.test_chainview import Execution

#: The codes a method may answer with (JSON-RPC's own, and those Ethereum clients use).
SPEC_CODES = {-32700, -32600, -32601, -32602, -32603, *CODES.values()}


class AcceptingSink:
    """Takes records as a broker would (a transaction that gets this far is valid)."""

    def send(self, topic: Any, event: Any, **_: Any) -> Future[Delivered]:
        future: Future[Delivered] = Future()
        future.set_result(Delivered(topic.name, 0, 0))
        return future


def _hex(size: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=size, max_size=size).map(lambda b: "0x" + b.hex())


#: What wallets and fuzzers send: quantities, hashes, addresses, tags, junk, objects.
SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["latest", "earliest", "pending", "safe", "finalized", "0x", "0x0", "0x1"]),
    st.integers(min_value=0, max_value=2**70).map(hex),
    _hex(20),
    _hex(20).map(to_checksum_address),
    _hex(32),
    st.binary(max_size=80).map(lambda b: "0x" + b.hex()),
    st.text(max_size=12),
)
FIELDS = st.sampled_from(
    [
        "from", "to", "data", "input", "value", "gas", "gasPrice", "maxFeePerGas", "nonce",
        "fromBlock", "toBlock", "address", "topics", "blockHash", "blockNumber",
        "requireCanonical", "accessList", "type", "chainId",
    ]
)  # fmt: skip
VALUES: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(FIELDS, st.text(max_size=6)), inner, max_size=5),
    ),
    max_leaves=8,
)
PARAMS = st.lists(VALUES, max_size=4)


@pytest.fixture(scope="module")
def rpc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JsonRpc]:
    store: Path = tmp_path_factory.mktemp("fuzz") / "store"
    execution = Execution(store)
    for n in range(1, 4):
        execution.block(n, to=to_checksum_address(b"\x22" * 20), value=n)
    view = ChainView(store, CHAIN_ID)
    ledger = LedgerQueries(view, block_gas_limit=30_000_000)
    intake = TransactionIntake(ChainRules(CHAIN_ID), AcceptingSink(), ledger)  # type: ignore[arg-type]
    yield JsonRpc(Methods(ledger, intake, chain_id=CHAIN_ID, client_version="fuzz"))
    view.close()
    execution.state.close()


METHODS = sorted(
    JsonRpc(Methods(None, None, chain_id=CHAIN_ID, client_version="t")).table  # type: ignore[arg-type]
)


@pytest.mark.parametrize("method", METHODS)
def test_any_parameters_get_a_result_or_a_spec_error(rpc: JsonRpc, method: str) -> None:
    @seed(13)
    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(PARAMS)
    def check(params: list[Any]) -> None:
        try:
            asyncio.run(rpc.run(method, params))
        except RpcError as exc:
            assert exc.code in SPEC_CODES, (method, params, exc.code, exc.message)

    check()


@seed(13)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        st.lists(st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "id": SCALARS}), max_size=3).map(
            lambda items: repr(items).encode()
        ),
        st.fixed_dictionaries(
            {"jsonrpc": st.sampled_from(["2.0", "1.0", 2]), "method": st.sampled_from(METHODS)},
            optional={"id": SCALARS, "params": VALUES},
        ).map(lambda doc: json.dumps(doc).encode()),
    )
)
def test_any_request_body_gets_a_response_document(rpc: JsonRpc, body: bytes) -> None:
    answer = asyncio.run(rpc.handle(body))
    documents = answer if isinstance(answer, list) else [answer]
    for document in documents:
        if document is not None and "error" in document:
            assert document["error"]["code"] in SPEC_CODES, (body, document)
