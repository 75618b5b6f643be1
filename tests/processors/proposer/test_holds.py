"""The proposer's holds: the group may resume no later than the oldest transaction that
is not in a block on the log."""

from __future__ import annotations

from processors.proposer.holds import Holds

P0 = ("lattice.tx.submitted", 0)
P1 = ("lattice.tx.submitted", 1)


def test_the_oldest_held_offset_of_each_partition() -> None:
    holds = Holds()
    assert holds.oldest(P0) is None
    holds.hold(b"a", P0, 5)
    holds.hold(b"b", P0, 7)
    holds.hold(b"c", P1, 2)
    assert (holds.oldest(P0), holds.oldest(P1), len(holds)) == (5, 2, 3)
    holds.release([b"a"])
    assert holds.oldest(P0) == 7
    holds.release([b"b", b"c", b"unknown"])
    assert (holds.oldest(P0), holds.oldest(P1), len(holds)) == (None, None, 0)


def test_a_key_read_again_keeps_its_first_offset() -> None:
    holds = Holds()
    holds.hold(b"a", P0, 9)
    holds.hold(b"b", P0, 4)  # read again after the partition came back: an older offset
    holds.hold(b"a", P0, 12)
    assert holds.oldest(P0) == 4
    holds.release([b"b"])
    assert holds.oldest(P0) == 9
