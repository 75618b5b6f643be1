"""The shape of the code: imports point inward, pure cores touch no infrastructure, and no
function outside the tests is longer than a screen."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "streams", "processors", "gateway", "gpu_worker", "deploy", "contracts")
#: What each package may import of the others (its own modules always).
ALLOWED = {
    "contracts": set(),  # Solidity sources, compiled artifacts and their loader
    "schemas": set(),
    "streams": {"schemas"},
    "processors": {"schemas", "streams", "contracts"},
    "gateway": {"schemas", "streams", "processors", "contracts"},
    "gpu_worker": {"schemas", "streams", "processors", "contracts"},
    "deploy": {"schemas", "streams", "processors", "gateway", "gpu_worker", "contracts"},
}
#: Pure cores: the rules, testable without Kafka, HTTP or a database.
CORES = (
    "processors/dag/blocks.py",
    "processors/dag/ghostdag.py",
    "processors/dag/naive.py",
    "processors/dag/ordering.py",
    "processors/dag/reachability.py",
    "processors/dag/vectors.py",
    "processors/execution/checkpoints.py",
    "processors/execution/db.py",
    "processors/execution/genesis.py",
    "processors/execution/ledger.py",
    "processors/execution/receipts.py",
    "processors/execution/transactions.py",
    "processors/execution/trie.py",
    "processors/execution/vm.py",
    "processors/market/chain.py",
    "processors/market/economics.py",
    "processors/market/jobs.py",
    "processors/market/lifecycle.py",
    "processors/market/matching.py",
    "processors/market/oracle.py",
    "processors/market/view.py",
    "processors/proposer/mempool.py",
    "processors/verifier/core.py",
    "processors/analytics/rows.py",
)
INFRASTRUCTURE = (
    "confluent_kafka",
    "fastapi",
    "starlette",
    "uvicorn",
    "rocksdict",
    "duckdb",
    "streams.kafka",
    "streams.admin",
    "streams.broker",
    "processors.runtime",
    "processors.state",
)
MAX_FUNCTION_LINES = 80


def sources(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module a file imports, at any depth of its code (deferred imports too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def test_imports_point_inward() -> None:
    wrong = []
    for package in PACKAGES:
        for path in sources(package):
            for line, module in imports(path):
                top = module.split(".")[0]
                if top in PACKAGES and top != package and top not in ALLOWED[package]:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert wrong == [], "\n".join(wrong)


def test_the_domain_sits_below_its_users() -> None:
    """What the issue names: no processor or gateway code imports the worker, and the
    worker imports no gateway code (the compute domain and the JSON-RPC client live in
    `processors/`)."""
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources("processors", "gateway", "gpu_worker")
        for line, module in imports(path)
        if (module.startswith("gpu_worker") and not path.is_relative_to(ROOT / "gpu_worker"))
        or (module.startswith("gateway") and path.is_relative_to(ROOT / "gpu_worker"))
    ]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("core", CORES)
def test_pure_cores_import_no_infrastructure(core: str) -> None:
    found = [
        f"{core}:{line} imports {module}"
        for line, module in imports(ROOT / core)
        if any(module == bad or module.startswith(bad + ".") for bad in INFRASTRUCTURE)
    ]
    assert found == [], "\n".join(found)


def test_no_function_outside_the_tests_is_longer_than_a_screen() -> None:
    long = []
    for path in sources(*PACKAGES, "bench"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines}")
    assert long == [], "\n".join(long)


def test_every_processor_shell_is_called_processor_py() -> None:
    """One name for a processor's shell in every subpackage that runs one."""
    shells = {
        p.parent.name
        for p in sources("processors")
        if "class " in p.read_text() and "(Processor[" in p.read_text()
    }
    for name in shells:
        assert (ROOT / "processors" / name / "processor.py").exists(), name
    assert {"dag", "execution", "market", "verifier", "proposer", "analytics"} <= shells
