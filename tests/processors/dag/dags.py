"""Random block DAGs for property tests, in the reference file format."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

# Numeric-looking and mixed IDs, so byte-wise hash order ("9" > "10") matters.
_ID = st.text(alphabet="0123456789ab", min_size=1, max_size=4)


@st.composite
def dags(draw: st.DrawFn, max_blocks: int = 40, k: int | None = None) -> dict[str, Any]:
    """A DAG document: each block points at an antichain of recent blocks (wide windows
    make parallel blocks and, under a small K, reds)."""
    chosen_k = k if k is not None else draw(st.one_of(st.integers(2, 4), st.integers(2, 18)))
    n = draw(st.integers(1, max_blocks))
    names = draw(st.lists(_ID, min_size=n + 1, max_size=n + 1, unique=True))
    genesis, ids = names[0], names[1:]
    past: dict[str, set[str]] = {genesis: set()}
    order = [genesis]
    blocks = []
    for block in ids:
        window = draw(st.integers(1, 10))
        recent = order[-window:]
        picked = draw(st.lists(st.sampled_from(recent), min_size=1, max_size=6, unique=True))
        parents = [p for p in picked if not any(p in past[q] for q in picked if q != p)]
        past[block] = set().union(*(past[p] | {p} for p in parents))
        order.append(block)
        blocks.append({"ID": block, "Parents": parents})
    return {"K": chosen_k, "GenesisID": genesis, "Blocks": blocks}


@st.composite
def delivery_orders(draw: st.DrawFn, document: dict[str, Any]) -> list[dict[str, Any]]:
    """Another topological order of the same blocks, as a different replica might see them."""
    pending = list(document["Blocks"])
    seen = {document["GenesisID"]}
    out = []
    while pending:
        ready = [b for b in pending if all(p in seen for p in b["Parents"])]
        block = draw(st.sampled_from(ready))
        pending.remove(block)
        seen.add(block["ID"])
        out.append(block)
    return out
