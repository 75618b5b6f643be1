"""Signed checkpoints: replicas vouch for the state root at a height (pure core).

Every execution replica signs, every `interval` blocks, Keccak-256(height || block hash ||
state root) with its secp256k1 key and publishes it on `lattice.checkpoints`. A height is
*final* once a quorum of the known replicas (a strict majority) signed the same block hash
and state root; the gateway calls the highest such height `finalized`. Replicas that sign
different roots for one height have diverged: `Checkpoints.divergences` names them, and the
gateway logs it and reports it through `lattice_status`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from coincurve import PrivateKey, PublicKey
from eth_hash.auto import keccak

from schemas.events import Checkpoint, Position


def checkpoint_digest(height: int, block_hash: bytes, state_root: bytes) -> bytes:
    return keccak(height.to_bytes(8, "big") + block_hash + state_root)


def replica_key(index: int) -> PrivateKey:
    """The devnet's well-known replica keys (public: for a development network only)."""
    return PrivateKey(keccak(b"lattice devnet replica %d" % index))


def address_of(key: PrivateKey) -> bytes:
    return keccak(key.public_key.format(compressed=False)[1:])[12:]


def sign_checkpoint(
    key: PrivateKey,
    height: int,
    block_hash: bytes,
    state_root: bytes,
    replica: str,
    cause: Position,
) -> Checkpoint:
    """A signed checkpoint."""
    digest = checkpoint_digest(height, block_hash, state_root)
    return Checkpoint(
        height=height,
        block_hash=block_hash,
        state_root=state_root,
        signer=address_of(key),
        signature=key.sign_recoverable(digest, hasher=None),
        replica=replica,
        cause=cause,
    )


def recover_signer(record: Checkpoint) -> bytes | None:
    digest = checkpoint_digest(record.height, record.block_hash, record.state_root)
    try:
        key = PublicKey.from_signature_and_message(record.signature, digest, hasher=None)
    except Exception:  # coincurve raises bare exceptions on malformed signatures
        return None
    return keccak(key.format(compressed=False)[1:])[12:]


@dataclass
class Checkpoints:
    """What the known replicas signed, height by height."""

    signers: frozenset[bytes]
    votes: dict[int, dict[bytes, tuple[bytes, bytes]]] = field(default_factory=dict)
    rejected: int = 0

    @property
    def quorum(self) -> int:
        return len(self.signers) // 2 + 1

    def add(self, record: Checkpoint) -> bool:
        """Count a checkpoint; False if its signature is bad or its signer unknown."""
        signer = recover_signer(record)
        if signer is None or signer != record.signer or signer not in self.signers:
            self.rejected += 1
            return False
        self.votes.setdefault(record.height, {})[signer] = (record.block_hash, record.state_root)
        return True

    def extend(self, records: Iterable[Checkpoint]) -> None:
        for record in records:
            self.add(record)

    def finalized(self) -> int:
        """The highest height a quorum agrees on (0 when none)."""
        for height in sorted(self.votes, reverse=True):
            tally: dict[tuple[bytes, bytes], int] = {}
            for vote in self.votes[height].values():
                tally[vote] = tally.get(vote, 0) + 1
            if max(tally.values()) >= self.quorum:
                return height
        return 0

    def agreed(
        self, low: int = 0, without: bytes | None = None
    ) -> list[tuple[int, tuple[bytes, bytes]]]:
        """The heights from `low` up that a quorum agrees on, counting no vote of
        `without` (a node checking its own state asks the others), with the block hash and
        state root they signed."""
        out = []
        for height in sorted(h for h in self.votes if h >= low):
            tally: dict[tuple[bytes, bytes], int] = {}
            for signer, vote in self.votes[height].items():
                if signer != without:
                    tally[vote] = tally.get(vote, 0) + 1
            best = max(tally.items(), key=lambda item: item[1], default=None)
            if best is not None and best[1] >= self.quorum:
                out.append((height, best[0]))
        return out

    def divergences(self) -> list[dict[str, Any]]:
        """Heights where replicas signed different roots, with who signed what."""
        out = []
        for height in sorted(self.votes):
            votes = self.votes[height]
            if len(set(votes.values())) > 1:
                out.append(
                    {
                        "height": height,
                        "votes": {
                            "0x" + s.hex(): {
                                "block_hash": "0x" + b.hex(),
                                "state_root": "0x" + r.hex(),
                            }
                            for s, (b, r) in sorted(votes.items())
                        },
                    }
                )
        return out
