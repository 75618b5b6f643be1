"""Merkle proofs of accounts and storage slots (EIP-1186, `eth_getProof`).

An account is proven by the nodes of the state trie on the path of keccak(address), from
the block's state root down; a slot by the nodes of the account's storage trie on the path
of keccak(slot). Each node is given RLP-encoded, as geth gives them; a client checks
them against the state root of a block header it trusts. An account or slot that does not
exist is proven too: the path shows where it would be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import rlp
from eth.constants import BLANK_ROOT_HASH, EMPTY_SHA3
from eth.rlp.accounts import Account
from eth_hash.auto import keccak
from trie.hexary import HexaryTrie


@dataclass(frozen=True)
class SlotProof:
    slot: int
    value: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class AccountProof:
    address: bytes
    balance: int
    nonce: int
    code_hash: bytes
    storage_root: bytes
    proof: tuple[bytes, ...]
    storage: tuple[SlotProof, ...]


def prove(db: Any, state_root: bytes, address: bytes, slots: Sequence[int]) -> AccountProof:
    """The proof of `address` and its `slots` in the state under `state_root`, read from
    `db` (the trie nodes by hash)."""
    state = HexaryTrie(db, state_root)
    key = keccak(address)
    encoded = state.get(key)
    account = rlp.decode(encoded, sedes=Account) if encoded else Account(0, 0, BLANK_ROOT_HASH)
    storage = HexaryTrie(db, account.storage_root)
    proofs = []
    for slot in slots:
        slot_key = keccak(slot.to_bytes(32, "big"))
        value = storage.get(slot_key)
        proofs.append(
            SlotProof(
                slot,
                rlp.decode(value, sedes=rlp.sedes.big_endian_int) if value else 0,
                _nodes(storage, slot_key),
            )
        )
    return AccountProof(
        address=address,
        balance=account.balance,
        nonce=account.nonce,
        code_hash=account.code_hash if encoded else EMPTY_SHA3,
        storage_root=account.storage_root,
        proof=_nodes(state, key),
        storage=tuple(proofs),
    )


def _nodes(trie: HexaryTrie, key: bytes) -> tuple[bytes, ...]:
    """The path's nodes, RLP-encoded, as geth lists them: the root, then every node
    stored by its hash (one under 32 bytes is embedded in its parent's encoding)."""
    if trie.root_hash == BLANK_ROOT_HASH:
        return ()
    encoded = [rlp.encode(node) for node in trie.get_proof(key)]  # type: ignore[no-untyped-call]
    return (encoded[0], *(node for node in encoded[1:] if len(node) >= 32))
