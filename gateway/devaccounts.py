"""Accounts the node signs for, as anvil and Hardhat do for their dev accounts.

A devnet holds the ten keys of the development mnemonic (`processors.execution.genesis`):
`eth_accounts` lists them, and `eth_sendTransaction`, `eth_signTransaction`, `eth_sign`,
`personal_sign` and `eth_signTypedData_v4` sign with them, so that tools that expect a
node to hold keys (Hardhat's default network config, `cast send --unlocked`, Remix's
"external" provider) work unchanged. A node signs for nobody unless its settings say
`dev_accounts` (the keys are public: development only).

`eth_sendTransaction` fills what the request leaves out as geth does: the pending nonce,
the chain id, gas from `eth_estimateGas`, and fees (EIP-1559 unless the request gives a
`gasPrice`: the suggested tip and twice the next base fee on top), then signs and sends
the transaction through the same intake as `eth_sendRawTransaction`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from gateway.formats import BadParam, parse_data, parse_qty
from gateway.ledger import SUGGESTED_TIP, Call, LedgerQueries


class UnknownAccount(ValueError):
    """An address the node holds no key for."""


@dataclass(frozen=True)
class DevAccounts:
    """The keys the node signs with, by address (none: it signs for nobody)."""

    accounts: tuple[LocalAccount, ...]

    @classmethod
    def of(cls, keys: Sequence[str]) -> DevAccounts:
        return cls(tuple(Account.from_key(key) for key in keys))

    def addresses(self) -> list[bytes]:
        return [bytes.fromhex(a.address[2:]) for a in self.accounts]

    def account(self, address: bytes) -> LocalAccount:
        for candidate in self.accounts:
            if bytes.fromhex(candidate.address[2:]) == address:
                return candidate
        raise UnknownAccount(f"unknown account 0x{address.hex()}: this node holds no key for it")

    def sign_message(self, address: bytes, message: bytes) -> bytes:
        """EIP-191 personal message signature (`eth_sign`, `personal_sign`)."""
        signed = self.account(address).sign_message(encode_defunct(primitive=message))
        return bytes(signed.signature)

    def sign_typed_data(self, address: bytes, typed: Any) -> bytes:
        """EIP-712 signature of typed data given as an object or its JSON text."""
        if isinstance(typed, str):
            try:
                typed = json.loads(typed)
            except ValueError as exc:
                raise BadParam(f"typed data: not JSON: {exc}") from None
        if not isinstance(typed, dict):
            raise BadParam("typed data: expected an object with types, domain and message")
        try:
            message = encode_typed_data(full_message=typed)
        except Exception as exc:  # eth_account raises bare errors on malformed data
            raise BadParam(f"typed data: {exc}") from None
        return bytes(self.account(address).sign_message(message).signature)

    def sign_transaction(self, fields: dict[str, Any]) -> bytes:
        """The raw signed transaction of complete `fields` (`transaction_fields`)."""
        account = self.account(bytes.fromhex(str(fields.pop("from"))[2:]))
        try:
            signed = account.sign_transaction(fields)
        except (TypeError, ValueError) as exc:
            raise BadParam(f"transaction: {exc}") from None
        return bytes(signed.raw_transaction)


def transaction_fields(
    request: Any, ledger: LedgerQueries, chain_id: int, pending_nonce: int | None
) -> dict[str, Any]:
    """A transaction request (`eth_sendTransaction`'s object) with every field the
    signature needs: what it gives, the rest filled as geth fills it."""
    if not isinstance(request, dict):
        raise BadParam("the transaction must be an object")
    if not request.get("from"):
        raise BadParam("the transaction needs a from address")
    sender = parse_data(request["from"], "from", 20)
    to = parse_data(request["to"], "to", 20) if request.get("to") else None
    payload = parse_data(request.get("input") or request.get("data") or "0x", "input")
    value = parse_qty(request["value"], "value") if request.get("value") else 0
    given_chain = parse_qty(request["chainId"], "chainId") if request.get("chainId") else chain_id
    if given_chain != chain_id:
        raise BadParam(f"chainId {given_chain} is not this chain's ({chain_id})")
    fields: dict[str, Any] = {
        "from": "0x" + sender.hex(),
        "chainId": chain_id,
        "value": value,
        "data": payload,
        "nonce": (
            parse_qty(request["nonce"], "nonce")
            if request.get("nonce") is not None
            else pending_nonce
        ),
    }
    if to is not None:
        fields["to"] = to_checksum_address(to)  # eth-account signs nothing else
    if request.get("accessList"):
        fields["accessList"] = request["accessList"]
    fields.update(_fees(request, ledger))
    if request.get("gas"):
        fields["gas"] = parse_qty(request["gas"], "gas")
    else:
        fields["gas"] = ledger.estimate_gas(Call(sender, to, None, value, payload), "latest")
    return fields


def _fees(request: dict[str, Any], ledger: LedgerQueries) -> dict[str, Any]:
    kind = parse_qty(request["type"], "type") if request.get("type") is not None else None
    if kind not in (None, 0, 1, 2):
        raise BadParam(f"transaction type {kind} cannot be signed here (0, 1 or 2)")
    legacy = kind in (0, 1) or (kind is None and request.get("gasPrice") is not None)
    if legacy:
        price = (
            parse_qty(request["gasPrice"], "gasPrice")
            if request.get("gasPrice")
            else ledger.gas_price()
        )
        out: dict[str, Any] = {"gasPrice": price}
        if kind == 1 or (kind is None and request.get("accessList")):
            out["type"] = 1
        return out
    tip = (
        parse_qty(request["maxPriorityFeePerGas"], "maxPriorityFeePerGas")
        if request.get("maxPriorityFeePerGas")
        else SUGGESTED_TIP
    )
    cap = (
        parse_qty(request["maxFeePerGas"], "maxFeePerGas")
        if request.get("maxFeePerGas")
        else 2 * ledger.next_base_fee() + tip
    )
    if cap < tip:
        raise BadParam(f"maxFeePerGas {cap} is below maxPriorityFeePerGas {tip}")
    return {"type": 2, "maxFeePerGas": cap, "maxPriorityFeePerGas": tip}
