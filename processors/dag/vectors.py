"""The reference DAG file format (Kaspa's GHOSTDAG test vectors) and running GHOSTDAG on it.

A file has `K`, `GenesisID` and `Blocks`, each block an `ID` and its `Parents`; the
`Expected*` fields are optional. An ID's hash is its UTF-8 bytes right-padded with zeros to
32 bytes; every block has unit work. Blocks may come in any order: they are coloured in a
topological order that follows the file wherever it can, and reported in file order.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processors.dag.ghostdag import Ghostdag, InvalidBlock


class DagFileError(ValueError):
    """The file is not a well-formed DAG; the message names the block and the problem."""


def id_hash(block_id: str) -> bytes:
    raw = block_id.encode()
    if len(raw) > 32:
        raise DagFileError(f"block ID {block_id!r} is longer than 32 bytes")
    return raw.ljust(32, b"\0")


@dataclass(frozen=True)
class BlockSpec:
    id: str
    parents: tuple[str, ...]
    expected: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DagFile:
    k: int
    genesis: str
    blocks: tuple[BlockSpec, ...]

    @classmethod
    def parse(cls, document: Any) -> DagFile:
        if not isinstance(document, dict):
            raise DagFileError("the file must hold a JSON object with K, GenesisID and Blocks")
        for key in ("K", "GenesisID", "Blocks"):
            if key not in document:
                raise DagFileError(f"missing {key!r}")
        k, genesis, blocks = document["K"], document["GenesisID"], document["Blocks"]
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise DagFileError(f"K must be a positive integer, got {k!r}")
        if not isinstance(genesis, str) or not isinstance(blocks, list):
            raise DagFileError("GenesisID must be a string and Blocks a list")
        specs = []
        for n, entry in enumerate(blocks):
            if not isinstance(entry, dict) or not isinstance(entry.get("ID"), str):
                raise DagFileError(f"Blocks[{n}] has no string ID")
            parents = entry.get("Parents")
            if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
                raise DagFileError(f"block {entry['ID']!r}: Parents must be a list of IDs")
            expected = {k2: v for k2, v in entry.items() if k2.startswith("Expected")}
            specs.append(BlockSpec(entry["ID"], tuple(parents), expected))
        return cls(k, genesis, tuple(specs))

    @classmethod
    def load(cls, path: Path) -> DagFile:
        try:
            document = json.loads(Path(path).read_text())
        except OSError as exc:
            raise DagFileError(f"cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise DagFileError(f"{path} is not valid JSON: {exc}") from None
        return cls.parse(document)

    def topological(self) -> list[BlockSpec]:
        """The blocks parents-first, in file order where the file allows it."""
        ids = {self.genesis}
        for spec in self.blocks:
            if spec.id in ids:
                raise DagFileError(f"duplicate block ID {spec.id!r}")
            ids.add(spec.id)
        children: dict[str, list[int]] = {}
        waiting = []
        for n, spec in enumerate(self.blocks):
            if not spec.parents:
                raise DagFileError(f"block {spec.id!r} has no parents")
            for parent in spec.parents:
                if parent not in ids:
                    raise DagFileError(f"block {spec.id!r} names unknown parent {parent!r}")
                children.setdefault(parent, []).append(n)
            waiting.append(len(set(spec.parents) - {self.genesis}))
        ready = deque(n for n, w in enumerate(waiting) if w == 0)
        order: list[BlockSpec] = []
        # A heap would keep strict file order; a FIFO of ready blocks keeps it whenever the
        # file is already topological, which is the common case.
        while ready:
            n = ready.popleft()
            order.append(self.blocks[n])
            for child in children.get(self.blocks[n].id, []):
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
        if len(order) != len(self.blocks):
            stuck = sorted(s.id for s, w in zip(self.blocks, waiting, strict=True) if w > 0)
            raise DagFileError(f"the parent links form a cycle through {', '.join(stuck[:10])}")
        return order


def order(dag: DagFile) -> Iterator[dict[str, Any]]:
    """Colour the DAG; yield one result per block, in file order."""
    ghostdag = Ghostdag(id_hash(dag.genesis), dag.k)
    names = {id_hash(dag.genesis): dag.genesis}
    for spec in dag.topological():
        block = id_hash(spec.id)
        names[block] = spec.id
        try:
            ghostdag.add(block, [id_hash(p) for p in spec.parents])
        except InvalidBlock as exc:
            if exc.code == "not_antichain":
                a, b = (names[h] for h in exc.blocks)
                why = f"parents {a!r} and {b!r} are ancestor and descendant (not an antichain)"
            elif exc.code == "mergeset_too_large":
                why = f"its mergeset exceeds {ghostdag.limit} blocks"
            else:
                why = str(exc)
            raise DagFileError(f"block {spec.id!r}: {why}") from None
    for spec in dag.blocks:
        data = ghostdag.data[id_hash(spec.id)]
        yield {
            "id": spec.id,
            "selected_parent": names[data.selected_parent] if data.selected_parent else None,
            "mergeset_blues": [names[b] for b in data.mergeset_blues],
            "mergeset_reds": [names[b] for b in data.mergeset_reds],
            "blue_score": data.blue_score,
            "blue_work": data.blue_work,
        }


def mismatches(spec: BlockSpec, result: Mapping[str, Any]) -> list[str]:
    """How a result differs from the block's Expected* fields (order-sensitive)."""
    checks = {
        "ExpectedSelectedParent": "selected_parent",
        "ExpectedBlues": "mergeset_blues",
        "ExpectedReds": "mergeset_reds",
        "ExpectedScore": "blue_score",
    }
    problems = []
    for expected_key, result_key in checks.items():
        if expected_key in spec.expected and spec.expected[expected_key] != result[result_key]:
            problems.append(
                f"block {spec.id}: {result_key} is {result[result_key]!r}, "
                f"expected {spec.expected[expected_key]!r}"
            )
    return problems
