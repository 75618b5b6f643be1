from __future__ import annotations

import contextlib

import pytest
import rlp
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.execution.transactions import (
    ChainRules,
    InvalidTransaction,
    decode_transaction,
    intrinsic_gas,
    parse_hex,
    sign_dynamic_fee,
)
from streams.settings import CHAIN_ID
from tests.txs import ACCOUNT, signed

RULES = ChainRules(CHAIN_ID)


@pytest.mark.parametrize("kind", [0, 1, 2, 4])
def test_decodes_each_type_and_recovers_the_sender(kind: int) -> None:
    raw = signed(kind, nonce=5, value=123)
    tx = decode_transaction(raw, RULES)
    assert tx.tx_type == kind
    assert tx.sender == bytes.fromhex(ACCOUNT.address[2:])
    assert tx.hash == keccak(raw)
    assert (tx.nonce, tx.value, tx.chain_id) == (5, 123, CHAIN_ID)
    assert tx.to == b"\x22" * 20


def test_contract_creation_has_no_recipient() -> None:
    tx = decode_transaction(signed(2, to=b"", data="0x6000", gas=60_000), RULES)
    assert tx.to is None and tx.data == b"\x60\x00"


def test_fee_views() -> None:
    tx = decode_transaction(signed(2), RULES)
    assert (tx.fee_cap, tx.tip_cap) == (2 * 10**9, 10**9)
    assert tx.effective_tip(int(1.5 * 10**9)) == 5 * 10**8
    legacy = decode_transaction(signed(0), RULES)
    assert legacy.effective_tip(4 * 10**8) == 6 * 10**8


def _error(raw: bytes, rules: ChainRules = RULES) -> InvalidTransaction:
    with pytest.raises(InvalidTransaction) as info:
        decode_transaction(raw, rules)
    return info.value


def test_each_bad_transaction_has_its_own_code() -> None:
    good = signed(2)
    assert _error(signed(2, chainId=1)).code == "wrong_chain_id"
    assert _error(good[:-7]).code == "truncated"
    assert _error(good + b"\x00").code == "malformed_rlp"
    assert _error(b"\x05" + good[1:]).code == "unsupported_type"
    assert _error(b"").code == "empty"
    assert _error(good, ChainRules(CHAIN_ID, max_tx_bytes=50)).code == "oversize"
    assert _error(signed(2, gas=20_000)).code == "intrinsic_gas_too_low"
    assert _error(signed(2, gas=40_000_000)).code == "gas_limit_too_high"
    assert _error(signed(2, maxPriorityFeePerGas=3 * 10**9)).code == "tip_above_fee_cap"
    assert _error(signed(4, to=b"")).code == "set_code_creation"
    fields = rlp.decode(signed(4)[1:])
    fields[9] = []  # eth-account will not sign an empty list: the node must refuse one
    assert _error(b"\x04" + rlp.encode(fields)).code == "empty_authorizations"
    assert _error(signed(4, gas=40_000)).code == "intrinsic_gas_too_low"  # 21,000 + 25,000
    assert _error(b"\x03" + good[1:]).code == "unsupported_type"


def test_tampered_signature_is_rejected_or_recovers_someone_else() -> None:
    fields = rlp.decode(signed(2)[1:])
    fields[-1] = (int.from_bytes(fields[-1], "big") ^ 1).to_bytes(32, "big")  # flip s
    tampered = b"\x02" + rlp.encode(fields)
    try:
        tx = decode_transaction(tampered, RULES)
    except InvalidTransaction as exc:
        assert exc.code == "bad_signature"
    else:
        assert tx.sender != bytes.fromhex(ACCOUNT.address[2:])
    fields[-1] = b"\xff" * 32  # s above the curve order
    assert _error(b"\x02" + rlp.encode(fields)).code == "bad_signature"
    fields[-3] = b"\x05"  # y-parity not 0/1
    assert _error(b"\x02" + rlp.encode(fields)).code == "bad_signature"


def test_unprotected_legacy_is_refused() -> None:
    fields = rlp.decode(signed(0))
    fields[6] = b"\x1b"  # v = 27: no chain id
    assert _error(rlp.encode(fields)).code == "unprotected"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("abcd", "not_hex"),
        ("0x", "empty"),
        ("0xabc", "not_hex"),
        ("0xzz", "not_hex"),
    ],
)
def test_parse_hex(text: str, code: str) -> None:
    with pytest.raises(InvalidTransaction) as info:
        parse_hex(text)
    assert info.value.code == code


def test_intrinsic_gas() -> None:
    assert intrinsic_gas(b"\x00" * 20, b"", ()) == 21_000
    # 4 + 16 gas of calldata, but the EIP-7623 floor (10 per token, 1 + 4 tokens) wins.
    assert intrinsic_gas(b"\x00" * 20, b"\x00\x01", ()) == 21_050
    assert intrinsic_gas(None, b"\x01" * 32, ()) == 21_000 + 32_000 + 2 + 32 * 16
    # EIP-7623 floor: 10 gas per token (zero byte 1 token, non-zero 4).
    assert intrinsic_gas(b"\x00" * 20, b"\x01" * 1000, ()) == 21_000 + 10 * 4000


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(InvalidTransaction):
        decode_transaction(data, RULES)


@settings(deadline=None)  # eth-account's first signature loads its code; the machine is shared
@given(
    nonce=st.integers(0, 2**32),
    value=st.integers(0, 10**24),
    data=st.binary(max_size=64),
    to=st.one_of(st.none(), st.binary(min_size=20, max_size=20)),
)
def test_the_processors_signer_matches_eth_account_byte_for_byte(
    nonce: int, value: int, data: bytes, to: bytes | None
) -> None:
    fields = {"nonce": nonce, "value": value, "data": data, "gas": 300_000}
    fees = {"maxFeePerGas": 50 * 10**9, "maxPriorityFeePerGas": 10**9}
    theirs = Account.sign_transaction(
        {"type": 2, "chainId": CHAIN_ID, **fields, **fees}
        | ({} if to is None else {"to": to_checksum_address(to)}),
        ACCOUNT.key,
    ).raw_transaction
    ours = sign_dynamic_fee(
        bytes(ACCOUNT.key),
        chain_id=CHAIN_ID,
        max_fee_per_gas=fees["maxFeePerGas"],
        max_priority_fee_per_gas=fees["maxPriorityFeePerGas"],
        to=to,
        **fields,
    )
    assert ours == bytes(theirs)
    assert decode_transaction(ours, RULES).sender == bytes.fromhex(ACCOUNT.address[2:])
