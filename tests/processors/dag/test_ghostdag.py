from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.dag.ghostdag import (
    Ghostdag,
    InvalidBlock,
    MissingParents,
    mergeset_limit,
    work_from_target,
)
from processors.dag.naive import PastSets
from processors.dag.vectors import DagFile, DagFileError, id_hash, mismatches, order
from tests.processors.dag.dags import dags, delivery_orders

REFERENCE = Path(__file__).parents[4] / "shared" / "reference" / "ghostdag"
VECTORS = sorted(REFERENCE.glob("dag*.json"))
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build(
    document: dict[str, Any], blocks: list[dict[str, Any]] | None = None, naive: bool = False
) -> Ghostdag:
    genesis = id_hash(document["GenesisID"])
    dag = Ghostdag(genesis, document["K"], reachability=PastSets(genesis) if naive else None)
    for block in blocks if blocks is not None else document["Blocks"]:
        dag.add(id_hash(block["ID"]), [id_hash(p) for p in block["Parents"]])
    return dag


def test_reference_vectors_are_present() -> None:
    assert len(VECTORS) == 6, f"expected the six reference DAGs in {REFERENCE}"


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.name)
def test_reference_vectors(path: Path) -> None:
    dag = DagFile.load(path)
    results = list(order(dag))
    assert [r["id"] for r in results] == [b.id for b in dag.blocks]
    assert [p for s, r in zip(dag.blocks, results, strict=True) for p in mismatches(s, r)] == []


def test_mismatch_is_reported() -> None:
    document = json.loads(VECTORS[0].read_text())
    document["Blocks"][3]["ExpectedScore"] += 1
    dag = DagFile.parse(document)
    results = list(order(dag))
    problems = [p for s, r in zip(dag.blocks, results, strict=True) for p in mismatches(s, r)]
    assert len(problems) == 1 and "blue_score" in problems[0]


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ([{"ID": "1", "Parents": ["x"]}], "unknown parent 'x'"),
        ([{"ID": "1", "Parents": ["0"]}, {"ID": "1", "Parents": ["0"]}], "duplicate block ID '1'"),
        ([{"ID": "1", "Parents": ["2"]}, {"ID": "2", "Parents": ["1"]}], "cycle"),
        ([{"ID": "1", "Parents": ["0"]}, {"ID": "2", "Parents": ["1", "0"]}], "not an antichain"),
        ([{"ID": "1", "Parents": []}], "no parents"),
        ([{"ID": "1", "Parents": ["0", "0"]}], "twice"),
        ([{"ID": "1"}], "Parents must be a list"),
    ],
)
def test_bad_files_get_clear_errors(blocks: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(DagFileError, match=message):
        list(order(DagFile.parse({"K": 3, "GenesisID": "0", "Blocks": blocks})))


def test_blocks_out_of_file_order_are_coloured_parents_first() -> None:
    document = json.loads(VECTORS[1].read_text())
    document["Blocks"].reverse()
    dag = DagFile.parse(document)
    results = list(order(dag))
    assert [r["id"] for r in results] == [b.id for b in dag.blocks]
    assert [p for s, r in zip(dag.blocks, results, strict=True) for p in mismatches(s, r)] == []


def test_hashes_compare_bytewise_not_numerically() -> None:
    # "9" and "10" tie on blue work; "9" > "10" as bytes, so "9" is the selected parent.
    document = {
        "K": 3,
        "GenesisID": "0",
        "Blocks": [
            {"ID": "10", "Parents": ["0"]},
            {"ID": "9", "Parents": ["0"]},
            {"ID": "x", "Parents": ["10", "9"]},
        ],
    }
    result = {r["id"]: r for r in order(DagFile.parse(document))}
    assert result["x"]["selected_parent"] == "9"
    assert result["x"]["mergeset_blues"] == ["9", "10"]
    assert id_hash("a1") < id_hash("a10") < id_hash("b")


def test_missing_parents_wait_and_duplicates_are_refused() -> None:
    g = Ghostdag(id_hash("0"), 3)
    with pytest.raises(MissingParents) as info:
        g.add(id_hash("2"), [id_hash("1")])
    assert info.value.missing == (id_hash("1"),)
    g.add(id_hash("1"), [id_hash("0")])
    g.add(id_hash("2"), [id_hash("1")])
    with pytest.raises(InvalidBlock) as dup:
        g.add(id_hash("2"), [id_hash("1")])
    assert dup.value.code == "duplicate"


def test_mergeset_limit_makes_a_block_invalid() -> None:
    assert mergeset_limit(18) == 180 and mergeset_limit(300) == 512 and mergeset_limit(2) == 180
    g = Ghostdag(id_hash("g"), 2)
    for i in range(180):  # 180 parallel children of genesis
        g.add(id_hash(f"p{i}"), [id_hash("g")])
    g.add(id_hash("ok"), [id_hash(f"p{i}") for i in range(180)])  # 179 merged + selected
    h = Ghostdag(id_hash("g"), 2)
    for i in range(181):
        h.add(id_hash(f"p{i}"), [id_hash("g")])
    with pytest.raises(InvalidBlock) as info:
        h.add(id_hash("big"), [id_hash(f"p{i}") for i in range(181)])
    assert info.value.code == "mergeset_too_large"


def test_work_from_target() -> None:
    assert work_from_target((1 << 256) - 1) == 1
    assert work_from_target(0) == 1 << 256
    g = Ghostdag(id_hash("g"), 3)
    g.add(id_hash("a"), [id_hash("g")], work=5)
    assert g.add(id_hash("b"), [id_hash("a")]).blue_work == 1 + 5


@PROPERTY
@given(st.data())
def test_same_dag_in_any_delivery_order_gives_the_same_colouring(data: st.DataObject) -> None:
    document = data.draw(dags())
    shuffled = data.draw(delivery_orders(document))
    a, b = build(document), build(document, shuffled)
    for block in document["Blocks"]:
        h = id_hash(block["ID"])
        assert a.data[h] == b.data[h]


@PROPERTY
@given(dags(max_blocks=50))
def test_index_agrees_with_naive_past_sets(document: dict[str, Any]) -> None:
    fast, naive = build(document), build(document, naive=True)
    for block in document["Blocks"]:
        h = id_hash(block["ID"])
        assert fast.data[h] == naive.data[h]
    ids = [id_hash(document["GenesisID"])] + [id_hash(b["ID"]) for b in document["Blocks"]]
    for x in ids:
        for y in ids:
            assert fast.reachability.is_dag_ancestor(x, y) == naive.reachability.is_dag_ancestor(
                x, y
            )


def _past(dag: Ghostdag, block: bytes) -> set[bytes]:
    seen: set[bytes] = set()
    stack = list(dag.parents[block])
    while stack:
        b = stack.pop()
        if b not in seen:
            seen.add(b)
            stack.extend(dag.parents[b])
    return seen


def _blue_set(dag: Ghostdag, block: bytes) -> set[bytes]:
    blues: set[bytes] = set()
    current: bytes | None = block
    while current is not None:
        blues.update(dag.data[current].mergeset_blues)
        current = dag.data[current].selected_parent
    return blues


@PROPERTY
@given(dags(max_blocks=30, k=2))
def test_every_blue_set_is_a_k_cluster(document: dict[str, Any]) -> None:
    dag = build(document)
    pasts = {b: _past(dag, b) for b in dag.data}
    for block in dag.data:
        blues = _blue_set(dag, block)
        for x in blues:
            anticone = [y for y in blues if y != x and y not in pasts[x] and x not in pasts[y]]
            assert len(anticone) <= dag.k


@PROPERTY
@given(dags(max_blocks=40))
def test_consensus_order_holds_every_block_exactly_once(document: dict[str, Any]) -> None:
    dag = build(document)
    children = {p for b in document["Blocks"] for p in b["Parents"]}
    tips = [id_hash(b["ID"]) for b in document["Blocks"] if b["ID"] not in children]
    tips = tips or [id_hash(document["GenesisID"])]
    virtual = b"\xff" * 32
    dag.add(virtual, tips)
    chain = []
    current: bytes | None = virtual
    while current is not None:
        chain.append(current)
        current = dag.data[current].selected_parent
    ordered = [b for c in reversed(chain) for b in dag.consensus_order(c)][:-1]  # drop virtual
    assert len(ordered) == len(set(ordered)) == len(document["Blocks"]) + 1
    # Parents always come before their children.
    position = {b: i for i, b in enumerate(ordered)}
    for block in document["Blocks"]:
        for parent in block["Parents"]:
            assert position[id_hash(parent)] < position[id_hash(block["ID"])]


@pytest.mark.parametrize(("k", "seed"), [(2, 1), (4, 2), (18, 3)])
def test_hundreds_of_blocks_agree_with_the_naive_index(k: int, seed: int) -> None:
    """Wide random DAGs (many reds under a small K), numeric-looking IDs."""
    import random

    rng = random.Random(seed)
    blocks: list[dict[str, Any]] = []
    past: dict[str, set[str]] = {"0": set()}
    order = ["0"]
    for n in range(1, 401):
        recent = order[-rng.randint(1, 12) :]
        picked = rng.sample(recent, min(len(recent), rng.randint(1, 5)))
        parents = [p for p in picked if not any(p in past[q] for q in picked if q != p)]
        past[str(n)] = set().union(*(past[p] | {p} for p in parents))
        order.append(str(n))
        blocks.append({"ID": str(n), "Parents": parents})
    document = {"K": k, "GenesisID": "0", "Blocks": blocks}
    fast, naive = build(document), build(document, naive=True)
    assert all(fast.data[h] == naive.data[h] for h in naive.data)
    reds = sum(len(d.mergeset_reds) for d in fast.data.values())
    if k < 18:
        assert reds > 20
