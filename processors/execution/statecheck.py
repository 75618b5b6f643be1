"""Is a copied state exactly the one a state root commits to? (pure core)

A node that joins from a snapshot gets another host's store: trie nodes under their
hashes, contract code under its hash. py-evm reads a node by its key and never re-hashes
it, so a store whose nodes were altered would execute on as if nothing were wrong. Before a
snapshot is used, `check_state` walks the whole state from a root, the account trie and every
account's storage trie, and checks that every node and every code blob hashes to the key it
is stored under and that nothing reachable is missing. A root that passes is the state the
root names, byte for byte; the root itself is then checked against the checkpoints a quorum
of the network's nodes signed (`deploy.snapshot`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rlp
from eth_hash.auto import keccak

from processors.execution.trie import BLANK_ROOT

#: Keccak of the empty byte string: the code hash of an account without code.
EMPTY_CODE = keccak(b"")


class StateMismatch(ValueError):
    """The store does not hold the state the root commits to."""


@dataclass(frozen=True)
class StateCheck:
    accounts: int
    storage_slots: int
    nodes: int
    code_bytes: int


def check_state(get: Callable[[bytes], bytes | None], state_root: bytes) -> StateCheck:
    """Walk the state under `state_root` (`get` reads a key: a node's or code's hash)."""
    counts = {"accounts": 0, "slots": 0, "nodes": 0, "code": 0}

    def slot(value: bytes) -> None:
        counts["slots"] += 1

    def account(value: bytes) -> None:
        counts["accounts"] += 1
        try:
            _nonce, _balance, storage_root, code_hash = rlp.decode(value)
        except (rlp.DecodingError, ValueError):
            raise StateMismatch("an account leaf that is not an RLP account") from None
        if storage_root != BLANK_ROOT:
            _walk(get, storage_root, slot, counts)
        if code_hash != EMPTY_CODE:
            code = get(code_hash)
            if code is None:
                raise StateMismatch(f"code 0x{code_hash.hex()} is missing")
            if keccak(code) != code_hash:
                raise StateMismatch(f"code stored under 0x{code_hash.hex()} hashes otherwise")
            counts["code"] += len(code)

    if state_root != BLANK_ROOT:
        _walk(get, state_root, account, counts)
    return StateCheck(counts["accounts"], counts["slots"], counts["nodes"], counts["code"])


def _walk(
    get: Callable[[bytes], bytes | None],
    root: bytes,
    leaf: Callable[[bytes], None],
    counts: dict[str, int],
) -> None:
    """Every node of one trie (children by hash or embedded), calling `leaf` on values."""
    stack: list[Any] = [root]
    while stack:
        ref = stack.pop()
        if isinstance(ref, list):
            node = ref  # embedded in its parent (its RLP is under 32 bytes)
        elif ref == b"":
            continue
        elif len(ref) == 32:
            raw = get(ref)
            if raw is None:
                raise StateMismatch(f"trie node 0x{ref.hex()} is missing")
            if keccak(raw) != ref:
                raise StateMismatch(f"trie node stored under 0x{ref.hex()} hashes otherwise")
            counts["nodes"] += 1
            try:
                node = rlp.decode(raw)
            except rlp.DecodingError:
                raise StateMismatch(f"trie node 0x{ref.hex()} is not RLP") from None
        else:
            raise StateMismatch(f"a child reference of {len(ref)} bytes")
        if not isinstance(node, list):
            raise StateMismatch("a trie node that is not a list")
        if len(node) == 17:
            stack.extend(node[:16])
            if node[16]:
                leaf(node[16])
        elif len(node) == 2:
            path, child = node
            if not path or not isinstance(path, bytes):
                raise StateMismatch("a trie node with a malformed path")
            if path[0] >> 4 >= 2:  # hex-prefix flag: a leaf
                leaf(child)
            else:
                stack.append(child)
        else:
            raise StateMismatch(f"a trie node of {len(node)} items")
