"""InferenceOracle (as the genesis deploys it) and the example ReviewBoard, executed by the
real ledger: requests escrow and log, the settler fulfils with a callback or refunds, anyone
reclaims after the deadline, and answers to another model or input are refused."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from eth._utils.address import generate_contract_address
from eth_abi.abi import decode, encode
from eth_hash.auto import keccak
from eth_typing import Address

from contracts.build import load
from processors.execution.genesis import (
    DEV_KEYS,
    INFERENCE_ORACLE,
    MODEL_REGISTRY,
    address_of,
    devnet_key,
)
from processors.execution.ledger import BlockResult
from processors.market import chain, oracle
from processors.market.chain import Settlement
from schemas.events import Position
from streams.settings import CHAIN_ID
from tests.contracts.test_job_market import Chain, ok
from tests.processors.execution.test_ledger import ordered

USER = bytes.fromhex(DEV_KEYS[0][2:])
OWNER = bytes.fromhex(DEV_KEYS[1][2:])
STRANGER = bytes.fromhex(DEV_KEYS[5][2:])
PROVIDER = address_of(devnet_key("worker", 3))
SETTLER = devnet_key("settler")
MANIFEST = "bafkreimanifest"
PRICE = 10**15
CAUSE = Position(topic="lattice.blocks.ordered", partition=0, offset=0)


class OracleChain(Chain):
    def send(self, key: bytes, to: bytes, data: bytes, value: int = 0) -> Any:
        """With gas for the oracle's work and a callback (as `oracle.settlement_gas` sets)."""
        result = self.block(key, to, data, value, gas=oracle.settlement_gas(300_000, data))
        assert not result.rejected, result.rejected
        return result.included[0].receipt

    def deploy(self, key: bytes, name: str, *args: Any, types: list[str]) -> bytes:
        nonce = self.nonces.get(key, 0)
        code = bytes.fromhex(load(name)["bytecode"][2:]) + encode(types, list(args))
        assert self.block(key, b"", code, gas=3_000_000).receipts[0].status == 1
        return bytes(generate_contract_address(Address(address_of(key)), nonce))

    def block(
        self, key: bytes, to: bytes, data: bytes, value: int = 0, gas: int = 1_000_000
    ) -> BlockResult:
        """Like `send`, but the whole block (its receipts as the execution processor logs them)."""
        nonce = self.nonces.get(key, 0)
        self.nonces[key] = nonce + 1
        raw = chain.signed_call(key, CHAIN_ID, nonce, to, data, value=value, gas=gas)
        self.height += 1
        block = ordered(self.height, [raw])
        block = dataclasses.replace(block, timestamp_ms=block.timestamp_ms + self.later_ms)
        result: BlockResult = self.ledger.execute(block)
        self.store.commit(self.overlay)
        return result


def board_call(signature: str, *args: Any) -> bytes:
    return chain.call_data(signature, *args)


def board_events(receipt: Any, signature: str) -> list[bytes]:
    """The data of the receipt's logs of one ReviewBoard event."""
    topic = int.from_bytes(keccak(signature.encode()))
    return [bytes(log.data) for log in receipt.logs if log.topics[0] == topic]


def setup(c: OracleChain) -> tuple[bytes, oracle.OracleRequest]:
    """A model registered, a ReviewBoard deployed and one review posted: its request."""
    register = chain.register_model_call("sentiment", MANIFEST, "bert")
    assert ok(c.send(OWNER, MODEL_REGISTRY, register))
    board = c.deploy(USER, "ReviewBoard", "sentiment", 120, types=["string", "uint64"])
    posted = c.block(USER, board, board_call("post(string)", 'great "value"\n'), value=PRICE)
    receipt = posted.receipts[0]
    assert receipt.status == 1
    requests = oracle.requests_in(receipt.event(CAUSE))
    assert len(requests) == 1
    return board, requests[0]


def fulfil(
    c: OracleChain, request: oracle.OracleRequest, paid: int, fee: int, output: bytes, **kw: Any
) -> Any:
    digest = kw.pop("digest", oracle.request_digest(request.manifest_cid, request.input))
    call = Settlement(
        b"\x07" * 32, INFERENCE_ORACLE, INFERENCE_ORACLE, PROVIDER, paid, fee, PRICE - paid - fee, 0
    )
    data = oracle.fulfil_call(request.request_id, call, digest, output)
    return c.send(kw.pop("key", SETTLER), INFERENCE_ORACLE, data)


def test_a_request_escrows_its_price_and_logs_the_job_it_asks_for() -> None:
    c = OracleChain()
    board, request = setup(c)
    assert request.requester == board and request.model == "sentiment"
    assert request.manifest_cid == MANIFEST and request.max_price_wei == PRICE
    # The board wrote the job's input as JSON, its text escaped.
    assert json.loads(request.input) == {"input": 'great "value"\n'}
    assert request.deadline - request.requested_at == 120 and request.callback_gas == 300_000
    assert c.balance_of(INFERENCE_ORACLE) == PRICE
    job = oracle.job_of(request, CHAIN_ID, 1234)
    assert job.params["manifest_cid"] == MANIFEST and job.input == request.input
    assert job.requester == board and job.max_price_wei == PRICE and not job.signature


def test_fulfil_pays_the_node_refunds_the_rest_and_calls_the_contract_back() -> None:
    c = OracleChain()
    board, request = setup(c)
    before = c.balance_of(PROVIDER)
    answer = b'{"labels": [[{"label": "positive", "score": 0.87654}]], "prompt_tokens": 4}'
    receipt = fulfil(c, request, 9 * 10**13, 10**13, oracle.callback_output(answer))
    assert ok(receipt)
    assert c.balance_of(PROVIDER) == before + 9 * 10**13
    assert c.balance_of(board) == PRICE - 10**14  # the unspent price, credited to the author
    (classified,) = board_events(receipt, "ReviewClassified(uint256,string,uint16)")
    assert decode(["string", "uint16"], classified) == ("positive", 8765)
    fulfilled = [log for log in receipt.logs if log.topics[0] == int.from_bytes(oracle.FULFILLED)]
    assert fulfilled and decode(["uint256"] * 3 + ["bool"], fulfilled[0].data)[3] is True
    # Once only: a second answer, a refund or a reclaim after it all revert.
    assert not ok(fulfil(c, request, 1, 0, b""))
    refund = Settlement(b"\x08" * 32, INFERENCE_ORACLE, INFERENCE_ORACLE, bytes(20), 0, 0, PRICE, 0)
    assert not ok(c.send(SETTLER, INFERENCE_ORACLE, oracle.refund_call(request.request_id, refund)))


def test_a_malformed_answer_is_delivered_and_the_board_does_not_revert() -> None:
    c = OracleChain()
    board, request = setup(c)
    receipt = fulfil(c, request, 10**14, 10**13, b"\x01")  # not ABI at all
    assert ok(receipt) and c.balance_of(board) == PRICE - 10**14 - 10**13
    fulfilled = [log for log in receipt.logs if log.topics[0] == int.from_bytes(oracle.FULFILLED)]
    assert decode(["uint256"] * 3 + ["bool"], fulfilled[0].data)[3] is True  # it did not revert
    assert board_events(receipt, "ReviewClassified(uint256,string,uint16)") == []


def test_answers_to_another_job_or_from_anyone_but_the_settler_are_refused() -> None:
    c = OracleChain()
    _, request = setup(c)
    output = oracle.callback_output(b'{"choices": [{"text": "hi", "token_ids": [1]}]}')
    assert decode(["string"], output) == ("hi",)
    forged = oracle.request_digest(request.manifest_cid, b'{"input":"something else"}')
    assert not ok(fulfil(c, request, 1, 0, output, digest=forged))
    assert not ok(fulfil(c, request, 1, 0, output, key=STRANGER))
    # The three parts must add up to the escrow.
    call = Settlement(b"\x07" * 32, INFERENCE_ORACLE, INFERENCE_ORACLE, PROVIDER, PRICE, 1, 0, 0)
    digest = oracle.request_digest(request.manifest_cid, request.input)
    data = oracle.fulfil_call(request.request_id, call, digest, output)
    assert not ok(c.send(SETTLER, INFERENCE_ORACLE, data))
    assert c.balance_of(INFERENCE_ORACLE) == PRICE


def test_refund_returns_the_escrow_and_tells_the_contract() -> None:
    c = OracleChain()
    board, request = setup(c)
    call = Settlement(b"\x08" * 32, INFERENCE_ORACLE, INFERENCE_ORACLE, bytes(20), 0, 0, PRICE, 0)
    wrong = dataclasses.replace(call, refund=PRICE - 1)
    assert not ok(c.send(SETTLER, INFERENCE_ORACLE, oracle.refund_call(request.request_id, wrong)))
    receipt = c.send(SETTLER, INFERENCE_ORACLE, oracle.refund_call(request.request_id, call))
    assert ok(receipt) and board_events(receipt, "ReviewRefunded(uint256)") == [b""]
    assert c.balance_of(board) == PRICE and c.balance_of(INFERENCE_ORACLE) == 0
    # The author takes the refund out of the board.
    before = c.balance(USER)
    assert ok(c.send(USER, board, board_call("withdrawRefund()")))
    assert c.balance(USER) > before + PRICE - 10**15  # less the gas


def test_anyone_reclaims_an_unanswered_request_after_its_deadline_and_grace() -> None:
    c = OracleChain()
    board, request = setup(c)
    assert not ok(c.send(STRANGER, INFERENCE_ORACLE, oracle.reclaim_call(request.request_id)))
    c.wait(121)  # past the deadline, but within the settler's grace: not yet
    assert not ok(c.send(STRANGER, INFERENCE_ORACLE, oracle.reclaim_call(request.request_id)))
    c.wait(600)
    assert ok(c.send(STRANGER, INFERENCE_ORACLE, oracle.reclaim_call(request.request_id)))
    assert c.balance_of(board) == PRICE
    assert not ok(c.send(STRANGER, INFERENCE_ORACLE, oracle.reclaim_call(request.request_id)))


def test_requests_are_checked_before_anything_is_escrowed() -> None:
    c = OracleChain()
    setup(c)
    good = ("sentiment", b'{"input":"x"}', 60, 100_000)
    for value, args in [
        (0, good),  # no payment
        (PRICE, ("nobody-registered-this", *good[1:])),
        (PRICE, (good[0], b"", *good[2:])),  # empty input
        (PRICE, (good[0], b"x" * 16385, *good[2:])),  # over 16 KiB
        (PRICE, (*good[:2], 9, good[3])),  # timeout under 10 s
        (PRICE, (*good[:3], 3_000_000)),  # callback gas over 2M
    ]:
        assert not ok(c.send(STRANGER, INFERENCE_ORACLE, oracle.request_call(*args), value=value))
    assert ok(c.send(STRANGER, INFERENCE_ORACLE, oracle.request_call(*good), value=PRICE))


def test_settlement_calls_read_back_as_the_settlements_they_make() -> None:
    call = Settlement(b"\x07" * 32, INFERENCE_ORACLE, INFERENCE_ORACLE, PROVIDER, 5, 1, 4, 0)
    data = oracle.fulfil_call(3, call, b"\x01" * 32, b"answer")
    assert oracle.oracle_settlement_of(data) == call
    back = dataclasses.replace(call, provider=bytes(20), paid=0, fee=0, refund=10)
    assert oracle.oracle_settlement_of(oracle.refund_call(3, back)) == back
    assert oracle.oracle_settlement_of(chain.deposit_call()) is None


def test_callback_outputs_by_shape() -> None:
    embedded = oracle.callback_output(b'{"embeddings": [[0.5, -0.25]], "prompt_tokens": 2}')
    assert decode(["int256[]"], embedded) == ((500_000, -250_000),)
    raw = b"PK\x03\x04 not json"
    assert decode(["bytes"], oracle.callback_output(raw)) == (raw,)
    # What does not read as its shape goes as it is; what is too long, as its digest.
    for odd in (
        b'{"labels": [[{"label": "x", "score": NaN}]]}',
        b'{"embeddings": [[1e300]]}',
        b'{"choices": [7]}',
    ):
        assert decode(["bytes"], oracle.callback_output(odd)) == (odd,)
    long = b'{"choices": [{"text": "' + b"y" * 40_000 + b'"}]}'
    assert decode(["bytes32"], oracle.callback_output(long)) == (keccak(long),)
    low = b'{"labels": [[{"label": "x", "score": -0.001}]]}'
    assert decode(["string", "uint256"], oracle.callback_output(low)) == ("x", 0)
