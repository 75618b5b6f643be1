"""Contracts that call models: `InferenceOracle` requests as jobs, answers as settlements
(pure core).

A contract calls `InferenceOracle.request(model, input, timeout, callbackGas)` with the job's
maximum price as value: the oracle escrows it, reads the model's current manifest from the
`ModelRegistry` and logs `InferenceRequested`. That log, in an executed block's receipt, is
the request: the matcher (which reads the receipts already, for stakes) turns it into a
`JobSubmitted` (`job_of`) with an id derived from the request id alone (`oracle_job_id`), so
whichever matcher writes it, and however often, it is one job. The market runs and verifies
it like any other. The verifier then settles it on the oracle instead of `JobMarket`:

- accepted: `fulfil` pays the node and the fee out of the escrow, refunds the rest, and calls
  the requester's `onInference(id, true, output)` with the answer ABI-encoded by its shape
  (`callback_output`); the call carries the request's digest (`request_digest`: the manifest
  and input it asked for), so an answer to anything else is refused by the ledger;
- expired, failed or rejected: `refund` returns the whole escrow and calls back with
  `ok = false` (a rejected node is slashed on `JobMarket` as for any job);
- nobody settles by the deadline (the market down): anyone may `reclaim` the escrow.

Everything the ledger does with a request is a transaction on the log, so a replay of the
log reproduces it; the conversion of a verified answer into callback bytes happens once, in
the verifier, and travels in its settlement transaction.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError, EncodingError
from eth_hash.auto import keccak

from processors.execution.genesis import INFERENCE_ORACLE
from processors.market.chain import Settlement, call_data, event_topic, selector
from processors.market.content import cid_of
from processors.market.jobs import INFERENCE, ORACLE_REQUEST, oracle_job_id
from schemas.events import JobSubmitted, Receipt

REQUESTED = event_topic(
    "InferenceRequested(uint256,address,string,string,bytes,uint256,uint64,uint64,uint32)"
)
FULFILLED = event_topic("InferenceFulfilled(uint256,bytes32,address,uint256,uint256,uint256,bool)")
REFUNDED = event_topic("InferenceRefunded(uint256,bytes32,uint256,bool)")
REQUEST = "request(string,bytes,uint64,uint32)"
FULFIL = "fulfil(uint256,bytes32,address,uint256,uint256,uint256,bytes32,bytes)"
REFUND = "refund(uint256,bytes32,uint256)"
RECLAIM = "reclaim(uint256)"
CALLBACK_GAS = "callback_gas"
#: The oracle's own work in a settlement, beyond the requester's callback gas.
SETTLE_GAS = 250_000
#: Score and embedding values are integers on chain: basis points and millionths.
SCORE_SCALE = 10_000
VALUE_SCALE = 1_000_000


@dataclass(frozen=True)
class OracleRequest:
    request_id: int
    requester: bytes
    model: str
    manifest_cid: str
    input: bytes
    max_price_wei: int
    requested_at: int  # block time, seconds
    deadline: int  # seconds
    callback_gas: int

    @property
    def deadline_ms(self) -> int:
        return self.deadline * 1000


def requests_in(receipt: Receipt) -> list[OracleRequest]:
    """The oracle requests a receipt's logs carry (none for any other transaction)."""
    found = []
    for log in receipt.logs:
        if log.address != INFERENCE_ORACLE or log.topics[:1] != (REQUESTED,):
            continue
        try:
            model, cid, data, price, at, deadline, gas = decode(
                ["string", "string", "bytes", "uint256", "uint64", "uint64", "uint32"], log.data
            )
        except DecodingError:
            continue  # the oracle wrote it: never, short of another contract at its address
        found.append(
            OracleRequest(
                request_id=int.from_bytes(log.topics[1]),
                requester=log.topics[2][-20:],
                model=str(model),
                manifest_cid=str(cid),
                input=bytes(data),
                max_price_wei=int(price),
                requested_at=int(at),
                deadline=int(deadline),
                callback_gas=int(gas),
            )
        )
    return found


def job_of(request: OracleRequest, chain_id: int, required_vram_bytes: int) -> JobSubmitted:
    """The job a request asks for: the requester pays from the oracle's escrow, the input is
    inline (the oracle caps it far below the events' inline limit)."""
    return JobSubmitted(
        job_id=oracle_job_id(chain_id, request.request_id),
        requester=request.requester,
        kind=INFERENCE,
        model_id=request.model,
        input_cid=cid_of(request.input),
        params={
            "manifest_cid": request.manifest_cid,
            ORACLE_REQUEST: str(request.request_id),
            CALLBACK_GAS: str(request.callback_gas),
        },
        required_vram_bytes=required_vram_bytes,
        max_price_wei=request.max_price_wei,
        deadline_ms=request.deadline_ms,
        nonce=request.request_id,
        submitted_at_ms=request.requested_at * 1000,
        signature=b"",
        input=request.input,
    )


def request_digest(manifest_cid: str, data: bytes) -> bytes:
    """What the oracle keeps of a request to check its answer against."""
    return keccak(encode(["bytes32", "bytes32"], [keccak(manifest_cid.encode()), keccak(data)]))


#: Answers over this many bytes, ABI-encoded, reach the contract as their digest: the
#: settlement transaction must stay far below the ledger's transaction size limit.
MAX_CALLBACK_BYTES = 32 * 1024


def callback_output(output: bytes) -> bytes:
    """A verified answer as the requester's callback receives it, by the answer's shape:

    - labels (text, image or image-text classification): `(string label, uint256 scoreBps)`,
      the first input's likeliest label and its probability in basis points;
    - embeddings: `(int256[] values)`, the first input's vector in millionths;
    - generation: `(string text)`, the first choice's text;
    - anything else (a tensor job's `.npz`, or an answer of one of those shapes that does not
      read as one): `(bytes output)` as the node wrote it;
    - an encoding over `MAX_CALLBACK_BYTES`: `(bytes32 digest)`, the Keccak-256 of the
      answer as the node wrote it (its bytes are on the log, `GET /v1/jobs/{id}`).

    Never raises: whatever a node wrote, its settlement can be sent.
    """
    try:
        encoded = _shaped(json.loads(output))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, EncodingError):
        encoded = None
    if encoded is None:
        encoded = encode(["bytes"], [output])
    if len(encoded) > MAX_CALLBACK_BYTES:
        return encode(["bytes32"], [keccak(output)])
    return encoded


def _shaped(document: Any) -> bytes | None:
    if not isinstance(document, dict):
        return None
    labels = document.get("labels")
    if isinstance(labels, list) and labels and labels[0]:
        best = labels[0][0]
        score = min(max(_scaled(best["score"], SCORE_SCALE), 0), SCORE_SCALE)
        return encode(["string", "uint256"], [str(best["label"]), score])
    vectors = document.get("embeddings")
    if isinstance(vectors, list) and vectors:
        return encode(["int256[]"], [[_scaled(v, VALUE_SCALE) for v in vectors[0]]])
    choices = document.get("choices", [document])
    if isinstance(choices, list) and choices and isinstance(choices[0].get("text"), str):
        return encode(["string"], [choices[0]["text"]])
    return None


def _scaled(value: Any, scale: int) -> int:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return round(number * scale)


def request_call(model: str, data: bytes, timeout_seconds: int, callback_gas: int) -> bytes:
    return call_data(REQUEST, model, data, timeout_seconds, callback_gas)


def fulfil_call(request_id: int, call: Settlement, digest: bytes, output: bytes) -> bytes:
    return call_data(
        FULFIL,
        request_id,
        call.settlement_id,
        "0x" + call.provider.hex(),
        call.paid,
        call.fee,
        call.refund,
        digest,
        output,
    )


def refund_call(request_id: int, call: Settlement) -> bytes:
    return call_data(REFUND, request_id, call.settlement_id, call.refund)


def reclaim_call(request_id: int) -> bytes:
    return call_data(RECLAIM, request_id)


def settlement_gas(callback_gas: int, data: bytes) -> int:
    """Enough for the oracle's work, the callback's gas (which the oracle checks is left)
    and the call data."""
    return SETTLE_GAS + callback_gas * 65 // 63 + 16 * len(data)


def oracle_settlement_of(data: bytes) -> Settlement | None:
    """The settlement a `fulfil` or `refund` call makes (the escrow is what is charged, so
    signer and requester are the oracle); None for any other call."""
    oracle = INFERENCE_ORACLE
    try:
        if data[:4] == selector(FULFIL):
            _, sid, provider, paid, fee, refund, _, _ = decode(_types(FULFIL), data[4:])
            return Settlement(
                sid, oracle, oracle, bytes.fromhex(provider[2:]), paid, fee, refund, 0
            )
        if data[:4] == selector(REFUND):
            _, sid, amount = decode(_types(REFUND), data[4:])
            return Settlement(sid, oracle, oracle, bytes(20), 0, 0, amount, 0)
    except DecodingError:
        return None
    return None


def _types(signature: str) -> list[str]:
    return signature[signature.index("(") + 1 : -1].split(",")
