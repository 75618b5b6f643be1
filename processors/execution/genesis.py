"""The ledger's genesis: chain parameters and the initial state.

By default the devnet funds the ten accounts of the standard development mnemonic
(`test test test test test test test test test test test junk`, m/44'/60'/0'/0/i) with
10,000 ETH each, as anvil and Hardhat do, so every tool's default accounts just work.
A genesis file (JSON: `{"timestamp": ..., "gas_limit": ..., "alloc": {"0xaddr": {"balance":
"wei", "nonce": 0, "code": "0x..", "storage": {"0xslot": "0xvalue"}}}}`) replaces it.
The chain id is fixed (27182, `streams.settings.CHAIN_ID`) and signed into transactions.

The market's system contracts live at fixed addresses from the genesis on: `JobMarket` at
`0x4c00…0001`, `ModelRegistry` at `0x4c00…0002` and `InferenceOracle` (contracts that ask
for inference) at `0x4c00…0003` (runtime code from the committed artifacts; JobMarket's
settler, treasury and minimum stake written into its slots 0..2, its unbonding period into
slot 10; the oracle's settler and treasury into its slots 0 and 1).
The devnet also funds a settler account (the verifier's, which sends settlements) and
sixteen worker accounts, with keys derived from public seeds (`devnet_key`): they are as
public as the development mnemonic and must never hold real value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coincurve import PrivateKey
from eth_hash.auto import keccak

from contracts.build import load as load_artifact

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
#: Their private keys (as public as the mnemonic; checked against the derivation in the tests).
DEV_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
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


JOB_MARKET = bytes.fromhex("4c00000000000000000000000000000000000001")
MODEL_REGISTRY = bytes.fromhex("4c00000000000000000000000000000000000002")
INFERENCE_ORACLE = bytes.fromhex("4c00000000000000000000000000000000000003")
MIN_STAKE = ETHER
#: How long a node that asked to leave waits for its stake (`JobMarket.withdrawStake`):
#: far beyond a job's deadline and verification, so what it did can still be slashed.
UNBONDING_SECONDS = 3600
DEV_WORKERS = 16


def devnet_key(role: str, index: int = 0) -> bytes:
    """The devnet's well-known private key for a role ("settler", "worker")."""
    return keccak(f"lattice devnet {role} {index}".encode())


def address_of(private_key: bytes) -> bytes:
    return keccak(PrivateKey(private_key).public_key.format(compressed=False)[1:])[-20:]


def system_contracts(
    settler: bytes, treasury: bytes, min_stake: int, unbonding_seconds: int = UNBONDING_SECONDS
) -> dict[bytes, Account]:
    """The market contracts' genesis entries."""

    def runtime(name: str) -> bytes:
        return bytes.fromhex(load_artifact(name)["deployedBytecode"][2:])

    market_slots = {
        0: int.from_bytes(settler),
        1: int.from_bytes(treasury),
        2: min_stake,
        10: unbonding_seconds,
    }
    oracle_slots = {0: int.from_bytes(settler), 1: int.from_bytes(treasury)}
    return {
        JOB_MARKET: Account(code=runtime("JobMarket"), storage=market_slots),
        MODEL_REGISTRY: Account(code=runtime("ModelRegistry")),
        INFERENCE_ORACLE: Account(code=runtime("InferenceOracle"), storage=oracle_slots),
    }


def dev_genesis(gas_limit: int) -> Genesis:
    alloc = {bytes.fromhex(a[2:]): Account(balance=10_000 * ETHER) for a in DEV_ACCOUNTS}
    settler = address_of(devnet_key("settler"))
    alloc[settler] = Account(balance=1_000 * ETHER)
    for i in range(DEV_WORKERS):
        alloc[address_of(devnet_key("worker", i))] = Account(balance=1_000 * ETHER)
    alloc.update(system_contracts(settler, settler, MIN_STAKE))
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
