"""Signed test transactions, made with eth-account (an independent implementation)."""

from __future__ import annotations

from typing import Any

from eth_account import Account

from streams.settings import CHAIN_ID

# Dev account 4 of the development mnemonic: funded in the devnet genesis.
KEY = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"
ACCOUNT = Account.from_key(KEY)
TO = "0x" + "22" * 20


def signed(kind: int = 2, key: str = KEY, **changes: Any) -> bytes:
    tx: dict[str, Any] = {"nonce": 0, "gas": 21_000, "to": TO, "value": 10**18, "chainId": CHAIN_ID}
    if kind == 0:
        tx["gasPrice"] = 10**9
    elif kind == 1:
        tx.update(
            type=1,
            gasPrice=10**9,
            gas=30_000,
            accessList=[{"address": "0x" + "33" * 20, "storageKeys": ["0x" + "00" * 32]}],
        )
    else:
        tx.update(type=kind, maxFeePerGas=2 * 10**9, maxPriorityFeePerGas=10**9)
    if kind == 4:  # delegates the sender's own account (authorization nonce: after the tx's)
        delegate = {"chainId": CHAIN_ID, "address": "0x" + "44" * 20, "nonce": 1}
        tx.update(gas=50_000, authorizationList=[Account.sign_authorization(delegate, key)])
    tx.update(changes)
    return bytes(Account.from_key(key).sign_transaction(tx).raw_transaction)
