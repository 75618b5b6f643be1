"""The ledger's genesis: chain parameters and the initial state.

By default the devnet funds the ten accounts of the standard development mnemonic
(`test test test test test test test test test test test junk`, m/44'/60'/0'/0/i) with
10,000 ETH each, as anvil and Hardhat do, so every tool's default accounts just work.
A genesis file (JSON: `{"timestamp": ..., "gas_limit": ..., "alloc": {"0xaddr": {"balance":
"wei", "nonce": 0, "code": "0x..", "storage": {"0xslot": "0xvalue"}}}}`) replaces it.
The chain id is fixed (27182, `streams.settings.CHAIN_ID`) and signed into transactions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ETHER = 10**18
#: m/44'/60'/0'/0/0..9 of the development mnemonic (checked against a derivation in the tests).
DEV_ACCOUNTS = (
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
    "0x9965507D1a55bcC2695C58ba16FB37d819B0A4dc",
    "0x976EA74026E726554dB657fA54763abd0C3a0aa9",
    "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955",
    "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f",
    "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
)
DEV_MNEMONIC = "test test test test test test test test test test test junk"
GENESIS_TIMESTAMP = 1_700_000_000


class GenesisError(ValueError):
    """A genesis file that cannot be used."""


@dataclass(frozen=True)
class Account:
    balance: int = 0
    nonce: int = 0
    code: bytes = b""
    storage: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Genesis:
    timestamp: int
    gas_limit: int
    alloc: Mapping[bytes, Account]

    def state(self) -> dict[bytes, dict[str, Any]]:
        """The allocation in py-evm's genesis-state shape."""
        return {
            address: {
                "balance": a.balance,
                "nonce": a.nonce,
                "code": a.code,
                "storage": dict(a.storage),
            }
            for address, a in sorted(self.alloc.items())
        }


def dev_genesis(gas_limit: int) -> Genesis:
    alloc = {bytes.fromhex(a[2:]): Account(balance=10_000 * ETHER) for a in DEV_ACCOUNTS}
    return Genesis(GENESIS_TIMESTAMP, gas_limit, alloc)


def _int(value: Any, what: str) -> int:
    try:
        if isinstance(value, str):
            return int(value, 16) if value.startswith("0x") else int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    except ValueError:
        pass
    raise GenesisError(f"{what}: expected an integer or 0x-hex string, got {value!r}")


def load_genesis(path: Path, default_gas_limit: int) -> Genesis:
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise GenesisError(f"cannot read genesis file {path}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("alloc"), dict):
        raise GenesisError(f"{path}: expected an object with an 'alloc' object")
    alloc = {}
    for address, entry in document["alloc"].items():
        raw = address.removeprefix("0x")
        if len(raw) != 40:
            raise GenesisError(f"{path}: {address!r} is not a 20-byte address")
        if not isinstance(entry, dict):
            raise GenesisError(f"{path}: alloc entry for {address} must be an object")
        storage = {
            _int(k, f"{address} storage slot"): _int(v, f"{address} storage value")
            for k, v in entry.get("storage", {}).items()
        }
        code = entry.get("code", "0x")
        alloc[bytes.fromhex(raw)] = Account(
            balance=_int(entry.get("balance", 0), f"{address} balance"),
            nonce=_int(entry.get("nonce", 0), f"{address} nonce"),
            code=bytes.fromhex(code.removeprefix("0x")),
            storage=storage,
        )
    return Genesis(
        timestamp=_int(document.get("timestamp", GENESIS_TIMESTAMP), "timestamp"),
        gas_limit=_int(document.get("gas_limit", default_gas_limit), "gas_limit"),
        alloc=alloc,
    )
