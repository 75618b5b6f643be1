from __future__ import annotations

import dataclasses

from processors.execution.checkpoints import (
    Checkpoints,
    address_of,
    recover_signer,
    replica_key,
    sign_checkpoint,
)
from schemas.events import Checkpoint, Position

CAUSE = Position(topic="lattice.blocks.ordered", partition=0, offset=1)
KEYS = [replica_key(i) for i in range(3)]
SIGNERS = frozenset(address_of(k) for k in KEYS)


def vote(index: int, height: int, root: bytes = b"r" * 32) -> Checkpoint:
    return sign_checkpoint(KEYS[index], height, b"h" * 32, root, f"replica-{index}", CAUSE)


def test_signatures_recover_their_signer() -> None:
    record = vote(1, 8)
    assert recover_signer(record) == address_of(KEYS[1]) == record.signer


def test_a_height_is_final_once_a_majority_agrees() -> None:
    book = Checkpoints(SIGNERS)
    assert book.quorum == 2
    book.add(vote(0, 4))
    assert book.finalized() == 0
    book.add(vote(1, 4))
    assert book.finalized() == 4
    book.add(vote(0, 8))
    assert book.finalized() == 4
    book.add(vote(0, 8))  # the same signer twice still counts once
    assert book.finalized() == 4


def test_divergence_is_reported_and_never_finalised_by_a_minority() -> None:
    book = Checkpoints(SIGNERS)
    book.add(vote(0, 4))
    book.add(vote(1, 4, root=b"x" * 32))
    assert book.finalized() == 0
    (divergence,) = book.divergences()
    assert divergence["height"] == 4 and len(divergence["votes"]) == 2
    book.add(vote(2, 4))
    assert book.finalized() == 4  # two of three agree


def test_forged_or_unknown_signers_are_ignored() -> None:
    book = Checkpoints(SIGNERS)
    forged = dataclasses.replace(vote(0, 4), state_root=b"z" * 32)  # signature no longer matches
    assert not book.add(forged)
    stranger = sign_checkpoint(replica_key(99), 4, b"h" * 32, b"r" * 32, "x", CAUSE)
    assert not book.add(stranger)
    assert book.rejected == 2 and book.finalized() == 0


def test_what_the_others_agree_on_leaves_out_the_asking_node() -> None:
    """A node checking its own state counts only the others: with 3 signers the other two
    must agree (quorum 2), whatever it signed itself."""
    book = Checkpoints(SIGNERS)
    own = address_of(KEYS[0])
    book.extend([vote(0, 4), vote(1, 4), vote(0, 8, b"x" * 32), vote(1, 8), vote(2, 8)])
    assert book.agreed() == [(4, (b"h" * 32, b"r" * 32)), (8, (b"h" * 32, b"r" * 32))]
    assert book.agreed(without=own) == [(8, (b"h" * 32, b"r" * 32))]  # 4: only one other
    assert book.agreed(low=5) == [(8, (b"h" * 32, b"r" * 32))]
