"""The market's ledger calls: ABI-encoded `JobMarket` / `ModelRegistry` transactions.

Money moves only through these transactions. They are built and signed here (EIP-1559,
fixed gas limits that cover each call with room to spare) by whoever owns the key: a worker
registering, a user depositing or authorising an API key, the verifier settling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_hash.auto import keccak

from processors.execution.genesis import JOB_MARKET, MODEL_REGISTRY
from processors.execution.transactions import sign_dynamic_fee


def selector(signature: str) -> bytes:
    return keccak(signature.encode())[:4]


def call_data(signature: str, *args: Any) -> bytes:
    types = signature[signature.index("(") + 1 : -1]
    return selector(signature) + encode([t for t in types.split(",") if t], list(args))


def event_topic(signature: str) -> bytes:
    return keccak(signature.encode())


SETTLED = event_topic("Settled(bytes32,address,address,uint256,uint256,uint256,uint256)")
NODE_REGISTERED = event_topic("NodeRegistered(address,uint256,uint256)")
UNSTAKE_REQUESTED = event_topic("UnstakeRequested(address,uint256,uint256)")
STAKE_WITHDRAWN = event_topic("StakeWithdrawn(address,uint256)")
MODEL_REGISTERED = event_topic("ModelRegistered(bytes32,string,string,address,uint32,string)")


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int = 50 * 10**9
    max_priority_fee_per_gas: int = 10**9


def signed_call(
    private_key: bytes,
    chain_id: int,
    nonce: int,
    to: bytes,
    data: bytes,
    *,
    value: int = 0,
    gas: int = 300_000,
    fees: Fees = Fees(),
) -> bytes:
    return sign_dynamic_fee(
        private_key,
        chain_id=chain_id,
        nonce=nonce,
        max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
        max_fee_per_gas=fees.max_fee_per_gas,
        gas=gas,
        to=to,
        value=value,
        data=data,
    )


SETTLE = "settle(bytes32,address,address,address,uint256,uint256,uint256,uint256)"


@dataclass(frozen=True)
class Settlement:
    """The arguments of a `JobMarket.settle` call."""

    settlement_id: bytes
    signer: bytes
    requester: bytes
    provider: bytes
    paid: int
    fee: int
    refund: int
    slash: int


def settle_call(
    settlement_id: bytes,
    signer: bytes,
    requester: bytes,
    provider: bytes,
    paid: int,
    fee: int,
    refund: int,
    slash: int,
) -> bytes:
    return call_data(
        SETTLE,
        settlement_id,
        "0x" + signer.hex(),
        "0x" + requester.hex(),
        "0x" + provider.hex(),
        paid,
        fee,
        refund,
        slash,
    )


def settlement_of(data: bytes) -> Settlement | None:
    """The arguments of a `settle` call's data; None for any other call."""
    if data[:4] != selector(SETTLE):
        return None
    try:
        words = decode(SETTLE[SETTLE.index("(") + 1 : -1].split(","), data[4:])
    except DecodingError:
        return None
    sid, signer, requester, provider, paid, fee, refund, slash = words
    return Settlement(
        sid,
        bytes.fromhex(signer[2:]),
        bytes.fromhex(requester[2:]),
        bytes.fromhex(provider[2:]),
        paid,
        fee,
        refund,
        slash,
    )


def register_node_call(price_wei_per_hour: int) -> bytes:
    return call_data("registerNode(uint256)", price_wei_per_hour)


def stakes_call(node: bytes) -> bytes:
    return call_data("stakes(address)", "0x" + node.hex())


def price_call(node: bytes) -> bytes:
    return call_data("priceWeiPerHour(address)", "0x" + node.hex())


def unbonding_until_call(node: bytes) -> bytes:
    return call_data("unbondingUntil(address)", "0x" + node.hex())


def request_unstake_call() -> bytes:
    return call_data("requestUnstake()")


def withdraw_stake_call() -> bytes:
    return call_data("withdrawStake()")


def deposit_call() -> bytes:
    return call_data("deposit()")


def authorise_call(delegate: bytes) -> bytes:
    return call_data("authorise(address)", "0x" + delegate.hex())


def register_model_call(name: str, manifest_cid: str, model_type: str) -> bytes:
    return call_data("register(string,string,string)", name, manifest_cid, model_type)


def decode_model_registered(data: bytes) -> tuple[str, str, int, str]:
    """(name, manifest CID, version, model type) from a ModelRegistered log's data."""
    name, cid, version, model_type = decode(["string", "string", "uint32", "string"], data)
    return str(name), str(cid), int(version), str(model_type)


__all__ = ["JOB_MARKET", "MODEL_REGISTRY"]
