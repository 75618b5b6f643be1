"""Decoding and stateless validation of signed Ethereum transactions (pure core).

Accepts the three transaction types Lattice executes: legacy with EIP-155 replay
protection (type 0), EIP-2930 access lists (type 1) and EIP-1559 dynamic fees (type 2).
Everything here depends only on the bytes and the chain parameters, so the gateway,
the proposers and execution all judge a transaction the same way; checks that need state
(nonce, balance, base fee) belong to execution.

Each rejection is an `InvalidTransaction` with a stable machine-readable `code` and a
message that tells the sender what to fix.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import rlp
from coincurve import PrivateKey, PublicKey
from eth_hash.auto import keccak
from rlp.sedes import Binary, CountableList, List, big_endian_int, binary

from schemas.events import TransactionSubmitted

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UINT256_MAX = (1 << 256) - 1
#: Largest nonce an Avro `long` carries; EIP-2681 allows up to 2**64-2, which no account
#: can reach in practice.
MAX_NONCE = (1 << 63) - 1
MAX_INITCODE_SIZE = 2 * 24576  # EIP-3860

TX_GAS = 21_000
TX_CREATE_GAS = 32_000
TX_DATA_ZERO_GAS = 4
TX_DATA_NONZERO_GAS = 16
INITCODE_WORD_GAS = 2
ACCESS_LIST_ADDRESS_GAS = 2_400
ACCESS_LIST_STORAGE_KEY_GAS = 1_900
FLOOR_TOKEN_GAS = 10  # EIP-7623 (Prague)

_address = Binary.fixed_length(20, allow_empty=True)
_access_list = CountableList(
    List([Binary.fixed_length(20), CountableList(Binary.fixed_length(32))])
)
_INT, _BYTES = big_endian_int, binary
# Field layouts as the EIPs list them (signature fields last).
# legacy: nonce, gas price, gas, to, value, data, v, r, s
_LEGACY = List([_INT, _INT, _INT, _address, _INT, _BYTES, _INT, _INT, _INT])
# EIP-2930: chain id, nonce, gas price, gas, to, value, data, access list, y, r, s
_EIP2930 = List([_INT, _INT, _INT, _INT, _address, _INT, _BYTES, _access_list, _INT, _INT, _INT])
# EIP-1559: chain id, nonce, tip cap, fee cap, gas, to, value, data, access list, y, r, s
_EIP1559 = List(
    [_INT, _INT, _INT, _INT, _INT, _address, _INT, _BYTES, _access_list, _INT, _INT, _INT]
)

# EIP-7702: the EIP-1559 fields, then the authorization list, then y, r, s; each
# authorization is [chain id, address, nonce, y, r, s], signed by the account it delegates.
_AUTHORIZATION = List([_INT, Binary.fixed_length(20), _INT, _INT, _INT, _INT])
_EIP7702 = List(
    [_INT, _INT, _INT, _INT, _INT, _address, _INT, _BYTES, _access_list,
     CountableList(_AUTHORIZATION), _INT, _INT, _INT]
)  # fmt: skip
#: Gas a set-code transaction pays per authorization (EIP-7702's PER_EMPTY_ACCOUNT_COST).
PER_AUTHORIZATION_GAS = 25_000

AccessList = tuple[tuple[bytes, tuple[bytes, ...]], ...]


class InvalidTransaction(ValueError):
    """A transaction that can never be valid on this chain."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ChainRules:
    """The chain parameters stateless validation depends on."""

    chain_id: int
    max_tx_bytes: int = 128 * 1024
    block_gas_limit: int = 30_000_000


@dataclass(frozen=True)
class Transaction:
    """A decoded, signature-checked transaction."""

    raw: bytes
    hash: bytes
    tx_type: int
    chain_id: int
    nonce: int
    gas_limit: int
    to: bytes | None
    value: int
    data: bytes
    access_list: AccessList
    gas_price: int | None
    max_fee_per_gas: int | None
    max_priority_fee_per_gas: int | None
    y_parity: int
    r: int
    s: int
    sender: bytes

    @property
    def fee_cap(self) -> int:
        """Most the sender pays per gas."""
        return self.max_fee_per_gas if self.max_fee_per_gas is not None else self.gas_price or 0

    @property
    def tip_cap(self) -> int:
        """Most the proposer is paid per gas above the base fee."""
        if self.max_priority_fee_per_gas is not None:
            return self.max_priority_fee_per_gas
        return self.gas_price or 0

    def effective_tip(self, base_fee: int) -> int:
        """Priority fee per gas actually paid at `base_fee` (mempool ordering key)."""
        return max(0, min(self.tip_cap, self.fee_cap - base_fee))


def effective_gas_price(fee_cap: int, tip_cap: int, base_fee: int) -> int:
    """What a transaction pays per gas in a block with `base_fee` (EIP-1559): the base fee
    plus its tip, capped by its fee cap. A legacy or access-list transaction's caps are
    both its gas price, so it pays exactly that."""
    return min(fee_cap, base_fee + tip_cap)


def parse_hex(text: str) -> bytes:
    """0x-prefixed hex as bytes, with an `InvalidTransaction` saying what is wrong."""
    if not isinstance(text, str) or not text.startswith(("0x", "0X")):
        raise InvalidTransaction("not_hex", "the raw transaction must be a 0x-prefixed hex string")
    digits = text[2:]
    if not digits:
        raise InvalidTransaction("empty", "the raw transaction is empty")
    if len(digits) % 2:
        raise InvalidTransaction("not_hex", "the hex string has an odd number of digits")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise InvalidTransaction(
            "not_hex", "the raw transaction contains non-hex characters"
        ) from None


def intrinsic_gas(
    to: bytes | None, data: bytes, access_list: AccessList, authorizations: int = 0
) -> int:
    """Gas charged before execution (with the EIP-7623 calldata floor)."""
    zeros = data.count(0)
    nonzeros = len(data) - zeros
    gas = TX_GAS + zeros * TX_DATA_ZERO_GAS + nonzeros * TX_DATA_NONZERO_GAS
    if to is None:
        gas += TX_CREATE_GAS + INITCODE_WORD_GAS * ((len(data) + 31) // 32)
    for _, keys in access_list:
        gas += ACCESS_LIST_ADDRESS_GAS + ACCESS_LIST_STORAGE_KEY_GAS * len(keys)
    gas += PER_AUTHORIZATION_GAS * authorizations
    floor = TX_GAS + FLOOR_TOKEN_GAS * (zeros + 4 * nonzeros)
    return max(gas, floor)


def _declared_length(payload: bytes, kind: str) -> int:
    """Total length an RLP list's prefix claims, to tell truncation from garbage."""
    prefix = payload[0] if payload else 0
    if prefix < 0xC0:
        raise InvalidTransaction("malformed_rlp", f"{kind}: expected an RLP list")
    if prefix <= 0xF7:
        return 1 + prefix - 0xC0
    size = prefix - 0xF7
    if len(payload) < 1 + size:
        raise InvalidTransaction("truncated", f"{kind}: transaction ends inside its RLP header")
    return 1 + size + int.from_bytes(payload[1 : 1 + size], "big")


def _rlp_fields(payload: bytes, sedes: List, kind: str) -> list[Any]:
    declared = _declared_length(payload, kind)
    if declared > len(payload):
        raise InvalidTransaction(
            "truncated",
            f"{kind}: RLP declares {declared} bytes but only {len(payload)} are present",
        )
    if declared < len(payload):
        raise InvalidTransaction(
            "malformed_rlp", f"{kind}: {len(payload) - declared} bytes after the RLP list"
        )
    try:
        items = rlp.decode(payload, strict=True)
    except rlp.exceptions.DecodingError as exc:
        raise InvalidTransaction(
            "malformed_rlp", f"{kind}: RLP cannot be decoded ({exc})"
        ) from None
    if not isinstance(items, list):
        raise InvalidTransaction("malformed_rlp", f"{kind}: expected an RLP list")
    if len(items) != len(sedes):
        raise InvalidTransaction(
            "malformed_rlp", f"{kind}: expected {len(sedes)} fields, got {len(items)}"
        )
    try:
        return list(sedes.deserialize(items))
    except rlp.exceptions.DeserializationError as exc:
        raise InvalidTransaction("malformed_rlp", f"{kind}: bad field ({exc})") from None


#: Senders each process keeps recovered (`_recover`): one transaction is read by a process
#: more than once (a gateway's intake and its pending view, a mempool and the block that
#: carries it, execution and a reorganisation's re-execution), and recovering is most of a
#: decode. Keyed by the signature, not the raw bytes: an entry stays ~300 bytes whatever
#: the transaction's size. A signature that recovers no key raises, and is not kept.
RECOVERED_KEPT = 4096


@functools.lru_cache(maxsize=RECOVERED_KEPT)
def _recover(signing_hash: bytes, y_parity: int, r: int, s: int) -> bytes:
    if y_parity not in (0, 1):
        raise InvalidTransaction(
            "bad_signature", f"signature y-parity must be 0 or 1, got {y_parity}"
        )
    if not (0 < r < SECP256K1_N) or not (0 < s < SECP256K1_N):
        raise InvalidTransaction("bad_signature", "signature r or s is out of range")
    if s > SECP256K1_N // 2:
        raise InvalidTransaction(
            "bad_signature", "signature s is in the upper half of the order (EIP-2)"
        )
    try:
        key = PublicKey.from_signature_and_message(
            r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([y_parity]),
            signing_hash,
            hasher=None,
        )
    except Exception:  # coincurve raises a bare Exception when no key matches
        raise InvalidTransaction(
            "bad_signature", "no public key recovers from the signature"
        ) from None
    return keccak(key.format(compressed=False)[1:])[12:]


@dataclass(frozen=True)
class _Fields:
    """A transaction's fields as its envelope carries them, and the hash it was signed over."""

    tx_type: int
    chain_id: int
    nonce: int
    gas_price: int | None
    max_fee: int | None
    max_tip: int | None
    gas: int
    to: bytes
    value: int
    data: bytes
    access_list: AccessList
    y_parity: int
    r: int
    s: int
    signing_hash: bytes
    authorizations: int = 0


def _fields(raw: bytes) -> _Fields:
    """The fields of a legacy (EIP-155), EIP-2930, EIP-1559 or EIP-7702 transaction."""
    first = raw[0]
    if first >= 0xC0:
        nonce, gas_price, gas, to, value, data, v, r, s = _rlp_fields(raw, _LEGACY, "legacy")
        if v in (27, 28):
            raise InvalidTransaction(
                "unprotected", "transaction has no chain id; sign it with EIP-155 replay protection"
            )
        if v < 35:
            raise InvalidTransaction("bad_signature", f"legacy signature v={v} is invalid")
        chain_id, y_parity = (v - 35) // 2, (v - 35) % 2
        signed = keccak(rlp.encode([nonce, gas_price, gas, to, value, data, chain_id, 0, 0]))
        return _Fields(
            0, chain_id, nonce, gas_price, None, None, gas, to, value, data, (), y_parity, r, s,
            signed,
        )  # fmt: skip
    if first == 1:
        (chain_id, nonce, gas_price, gas, to, value, data, access, y_parity, r, s) = _rlp_fields(
            raw[1:], _EIP2930, "EIP-2930"
        )
        signed = keccak(
            b"\x01" + rlp.encode([chain_id, nonce, gas_price, gas, to, value, data, access])
        )
        access_list = tuple((a, tuple(k)) for a, k in access)
        return _Fields(
            1, chain_id, nonce, gas_price, None, None, gas, to, value, data, access_list,
            y_parity, r, s, signed,
        )  # fmt: skip
    if first == 2:
        (chain_id, nonce, max_tip, max_fee, gas, to, value, data, access, y_parity, r, s) = (
            _rlp_fields(raw[1:], _EIP1559, "EIP-1559")
        )
        signed = keccak(
            b"\x02" + rlp.encode([chain_id, nonce, max_tip, max_fee, gas, to, value, data, access])
        )
        access_list = tuple((a, tuple(k)) for a, k in access)
        return _Fields(
            2, chain_id, nonce, None, max_fee, max_tip, gas, to, value, data, access_list,
            y_parity, r, s, signed,
        )  # fmt: skip
    if first == 4:
        return _set_code_fields(raw)
    raise InvalidTransaction(
        "unsupported_type",
        f"transaction type 0x{first:02x} is not supported (legacy, 0x01, 0x02 and 0x04 are; "
        "0x03 blob transactions need blob data, which blocks here do not carry)",
    )


def _set_code_fields(raw: bytes) -> _Fields:
    """EIP-7702's set-code transaction: a call (never a creation) with authorizations.
    Each authorization's own signature is the executor's to judge (an invalid one is
    skipped, not the transaction), as the EIP says."""
    (chain_id, nonce, max_tip, max_fee, gas, to, value, data, access, auths, y_parity, r, s) = (
        _rlp_fields(raw[1:], _EIP7702, "EIP-7702")
    )
    if not to:
        raise InvalidTransaction("set_code_creation", "a set-code transaction cannot create")
    if not auths:
        raise InvalidTransaction(
            "empty_authorizations", "a set-code transaction needs at least one authorization"
        )
    body = [chain_id, nonce, max_tip, max_fee, gas, to, value, data, access, auths]
    signed = keccak(b"\x04" + rlp.encode(body))
    access_list = tuple((a, tuple(k)) for a, k in access)
    return _Fields(
        4, chain_id, nonce, None, max_fee, max_tip, gas, to, value, data, access_list,
        y_parity, r, s, signed, len(auths),
    )  # fmt: skip


def _check(f: _Fields, rules: ChainRules) -> None:
    """Every stateless rule a transaction's fields must keep."""
    if f.chain_id != rules.chain_id:
        raise InvalidTransaction(
            "wrong_chain_id",
            f"transaction is signed for chain id {f.chain_id}; this network is {rules.chain_id}",
        )
    for name, amount in (
        ("value", f.value),
        ("gas price", f.gas_price),
        ("max fee", f.max_fee),
        ("max priority fee", f.max_tip),
    ):
        if amount is not None and amount > UINT256_MAX:
            raise InvalidTransaction("malformed_rlp", f"{name} does not fit in 256 bits")
    if f.nonce > MAX_NONCE:
        raise InvalidTransaction("nonce_too_large", f"nonce {f.nonce} exceeds {MAX_NONCE}")
    if f.max_fee is not None and f.max_tip is not None and f.max_tip > f.max_fee:
        raise InvalidTransaction(
            "tip_above_fee_cap",
            f"max priority fee {f.max_tip} is above max fee per gas {f.max_fee}",
        )
    if f.gas > rules.block_gas_limit:
        raise InvalidTransaction(
            "gas_limit_too_high",
            f"gas limit {f.gas} exceeds the block gas limit {rules.block_gas_limit}",
        )
    if not f.to and len(f.data) > MAX_INITCODE_SIZE:
        raise InvalidTransaction(
            "initcode_too_large",
            f"init code is {len(f.data)} bytes; the limit is {MAX_INITCODE_SIZE}",
        )
    needed = intrinsic_gas(f.to or None, f.data, f.access_list, f.authorizations)
    if f.gas < needed:
        raise InvalidTransaction(
            "intrinsic_gas_too_low", f"gas limit {f.gas} is below the intrinsic gas {needed}"
        )


def decode_transaction(raw: bytes, rules: ChainRules) -> Transaction:
    """Decode `raw`, recover its sender and apply every stateless check."""
    if not raw:
        raise InvalidTransaction("empty", "the raw transaction is empty")
    if len(raw) > rules.max_tx_bytes:
        raise InvalidTransaction(
            "oversize", f"transaction is {len(raw)} bytes; the limit is {rules.max_tx_bytes}"
        )
    f = _fields(raw)
    _check(f, rules)
    return Transaction(
        raw=raw,
        hash=keccak(raw),
        tx_type=f.tx_type,
        chain_id=f.chain_id,
        nonce=f.nonce,
        gas_limit=f.gas,
        to=f.to or None,
        value=f.value,
        data=f.data,
        access_list=f.access_list,
        gas_price=f.gas_price,
        max_fee_per_gas=f.max_fee,
        max_priority_fee_per_gas=f.max_tip,
        y_parity=f.y_parity,
        r=f.r,
        s=f.s,
        sender=_recover(f.signing_hash, f.y_parity, f.r, f.s),
    )


def submitted_event(
    tx: Transaction, received_at_ms: int, source: str, account_nonce: int | None = None
) -> TransactionSubmitted:
    """The `lattice.tx.submitted` event for a decoded transaction (`account_nonce`: the
    sender's nonce in the state the submitter read, if it read one)."""
    return TransactionSubmitted(
        hash=tx.hash,
        raw=tx.raw,
        sender=tx.sender,
        tx_type=tx.tx_type,
        chain_id=tx.chain_id,
        nonce=tx.nonce,
        gas_limit=tx.gas_limit,
        to=tx.to,
        value=tx.value,
        gas_price=tx.gas_price,
        max_fee_per_gas=tx.max_fee_per_gas,
        max_priority_fee_per_gas=tx.max_priority_fee_per_gas,
        received_at_ms=received_at_ms,
        source=source,
        account_nonce=account_nonce,
    )


def sign_dynamic_fee(
    private_key: bytes,
    *,
    chain_id: int,
    nonce: int,
    max_priority_fee_per_gas: int,
    max_fee_per_gas: int,
    gas: int,
    to: bytes | None,
    value: int,
    data: bytes,
) -> bytes:
    """A signed EIP-1559 transaction (no access list), as `decode_transaction` reads it.
    The processors that sign (the verifier settling, a worker registering) need only this
    one shape: signing here keeps eth-account, and the BLS code it imports (about half a
    second a process), out of them."""
    fields = [
        chain_id, nonce, max_priority_fee_per_gas, max_fee_per_gas, gas, to or b"", value,
        data, [],
    ]  # fmt: skip
    signing_hash = keccak(b"\x02" + rlp.encode(fields))
    signature = PrivateKey(private_key).sign_recoverable(signing_hash, hasher=None)
    r, s, y_parity = signature[:32], signature[32:64], signature[64]
    body: bytes = rlp.encode(
        [*fields, y_parity, int.from_bytes(r, "big"), int.from_bytes(s, "big")]
    )
    return b"\x02" + body
