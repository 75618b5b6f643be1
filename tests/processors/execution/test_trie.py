"""The one-pass ordered trie against py-evm's own construction (an independent one)."""

from __future__ import annotations

import random

import pytest
import rlp
from eth.db.trie import _make_trie_root_and_nodes
from trie import HexaryTrie

from processors.execution.trie import BLANK_ROOT, ordered_trie


def _items(count: int, seed: int) -> tuple[bytes, ...]:
    rng = random.Random(seed)
    # Short items make nodes under 32 bytes, which are embedded rather than stored.
    return tuple(rng.randbytes(rng.choice([1, 3, 20, 40, 110])) for _ in range(count))


@pytest.mark.parametrize("count", [0, 1, 2, 3, 15, 16, 17, 127, 128, 129, 200, 256, 300, 1100])
def test_same_root_and_nodes_as_py_evm(count: int) -> None:
    for seed in range(3):
        items = _items(count, seed)
        assert ordered_trie(items) == _make_trie_root_and_nodes(items)


def test_py_evm_reads_every_item_back() -> None:
    items = _items(300, 7)
    root, nodes = ordered_trie(items)
    trie = HexaryTrie(nodes, root)

    assert [trie[rlp.encode(i)] for i in range(len(items))] == list(items)
    assert ordered_trie([])[0] == BLANK_ROOT == HexaryTrie({}).root_hash
