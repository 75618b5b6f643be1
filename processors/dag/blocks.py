"""DAG blocks: hashing, signing and stateless verification (pure core).

A block's hash is Keccak-256 of the RLP list
``[version, parents, proposer, timestamp_ms, sequence, target, transactions_root]``
(`target` empty for unit work). The proposer signs the hash with secp256k1 (65 bytes,
r || s || v with v in {0, 1}); the proposer field must equal the recovered address, so a
block names its signer. `transactions_root` is Keccak-256 of the RLP list of the
transactions' hashes, binding the transaction list to the signed header.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import rlp
from coincurve import PrivateKey, PublicKey
from eth_hash.auto import keccak

from processors.dag.ghostdag import InvalidBlock
from schemas.events import BlockProposed

VERSION = 1
#: Limits a block must respect (raw transaction bytes and count).
MAX_BLOCK_BYTES = 2 * 1024 * 1024
MAX_BLOCK_TRANSACTIONS = 10_000
MAX_PARENTS = 64


def genesis_hash(chain_id: int) -> bytes:
    """The genesis every proposer starts from: fixed per chain."""
    return keccak(b"lattice/genesis/" + str(chain_id).encode())


def transactions_root(transactions: Sequence[bytes]) -> bytes:
    return keccak(rlp.encode([keccak(tx) for tx in transactions]))


def header_hash(
    parents: Sequence[bytes],
    proposer: bytes,
    timestamp_ms: int,
    sequence: int,
    target: int | None,
    tx_root: bytes,
    version: int = VERSION,
) -> bytes:
    fields = [
        version,
        list(parents),
        proposer,
        timestamp_ms,
        sequence,
        b"" if target is None else target,
        tx_root,
    ]
    return keccak(rlp.encode(fields))


def address_of(key: PrivateKey) -> bytes:
    return keccak(key.public_key.format(compressed=False)[1:])[12:]


@dataclass(frozen=True)
class Proposer:
    """A proposer's signing identity."""

    key: PrivateKey

    @property
    def address(self) -> bytes:
        return address_of(self.key)

    def make_block(
        self,
        parents: Sequence[bytes],
        timestamp_ms: int,
        sequence: int,
        transactions: Sequence[bytes],
        target: int | None = None,
    ) -> BlockProposed:
        """A signed block."""
        root = transactions_root(transactions)
        block_hash = header_hash(parents, self.address, timestamp_ms, sequence, target, root)
        signature = self.key.sign_recoverable(block_hash, hasher=None)
        return BlockProposed(
            hash=block_hash,
            version=VERSION,
            parents=tuple(parents),
            proposer=self.address,
            timestamp_ms=timestamp_ms,
            sequence=sequence,
            target=target,
            transactions_root=root,
            transactions=tuple(transactions),
            signature=signature,
        )


def verify_block(record: BlockProposed) -> None:
    """Check everything about a block that needs no other block; raises `InvalidBlock`."""
    block = record.hash
    label = block.hex()[:16]
    if record.version != VERSION:
        raise InvalidBlock("bad_version", f"block {label}: unknown version {record.version}")
    parents = record.parents
    if not 1 <= len(parents) <= MAX_PARENTS:
        raise InvalidBlock("bad_parents", f"block {label}: needs 1 to {MAX_PARENTS} parents")
    transactions = record.transactions
    if len(transactions) > MAX_BLOCK_TRANSACTIONS or sum(map(len, transactions)) > MAX_BLOCK_BYTES:
        raise InvalidBlock("too_large", f"block {label}: over the size limit")
    root = transactions_root(transactions)
    if root != record.transactions_root:
        raise InvalidBlock("bad_tx_root", f"block {label}: transactions do not match the root")
    expected = header_hash(
        parents,
        record.proposer,
        record.timestamp_ms,
        record.sequence,
        record.target,
        root,
        record.version,
    )
    if expected != block:
        raise InvalidBlock("bad_hash", f"block {label}: hash does not match the header")
    signature = record.signature
    try:
        key = PublicKey.from_signature_and_message(signature, block, hasher=None)
    except Exception:  # coincurve raises bare Exception/ValueError on bad signatures
        raise InvalidBlock("bad_signature", f"block {label}: unreadable signature") from None
    if keccak(key.format(compressed=False)[1:])[12:] != record.proposer:
        raise InvalidBlock("bad_signature", f"block {label}: not signed by its proposer")
