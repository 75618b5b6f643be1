"""Compile `contracts/src/*.sol` with solc-js and keep the artifacts in `contracts/artifacts/`.

    .venv/bin/python -m contracts.build          # rebuild the artifacts
    .venv/bin/python -m contracts.build --check  # exit 1 if they differ from the sources

solc-js (npm `solc`, pinned in package.json; `make` installs it) compiles through its
standard-JSON interface with the optimizer on (200 runs) for the EVM version py-evm executes.
Each artifact holds the ABI, creation and runtime bytecode, the compiler version and the
SHA-256 of its source, so a test can tell that the committed artifacts match the sources.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SOURCES = ROOT / "src"
ARTIFACTS = ROOT / "artifacts"
SOLCJS = ROOT.parent / "node_modules" / ".bin" / "solcjs"
EVM_VERSION = "cancun"


class BuildError(RuntimeError):
    """solc-js is missing or the sources do not compile."""


def compile_sources(source_dir: Path = SOURCES) -> dict[str, dict[str, Any]]:
    if not SOLCJS.exists():
        raise BuildError(f"{SOLCJS} not found: run `make install` (npm ci) first")
    sources = {p.name: {"content": p.read_text()} for p in sorted(source_dir.glob("*.sol"))}
    request = {
        "language": "Solidity",
        "sources": sources,
        "settings": {
            "optimizer": {"enabled": True, "runs": 200},
            "evmVersion": EVM_VERSION,
            "outputSelection": {
                "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}
            },
        },
    }
    # Node cuts what it writes to a pipe at 64 KiB when solcjs exits; a file gets it all.
    with tempfile.TemporaryFile("w+") as written:
        result = subprocess.run(
            [str(SOLCJS), "--standard-json"],
            input=json.dumps(request),
            stdout=written,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        written.seek(0)
        stdout = written.read()
    # solcjs may print notices (e.g. about SMT solvers) before the JSON document.
    start = stdout.find("{")
    try:
        output = json.loads(stdout[start:] if start >= 0 else stdout)
    except ValueError:
        raise BuildError(f"solc-js failed: {result.stderr or stdout}") from None
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise BuildError("\n".join(e.get("formattedMessage", e["message"]) for e in errors))
    version = subprocess.run(
        [str(SOLCJS), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    artifacts = {}
    for source, contracts in output["contracts"].items():
        digest = hashlib.sha256(sources[source]["content"].encode()).hexdigest()
        for name, compiled in contracts.items():
            if not compiled["evm"]["bytecode"]["object"]:
                continue  # an interface: its ABI is in the contracts that use it
            artifacts[name] = {
                "contractName": name,
                "sourceName": f"contracts/src/{source}",
                "sourceSha256": digest,
                "compiler": f"solc-js {version}",
                "evmVersion": EVM_VERSION,
                "abi": compiled["abi"],
                "bytecode": "0x" + compiled["evm"]["bytecode"]["object"],
                "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
            }
    return artifacts


def render(artifact: dict[str, Any]) -> str:
    return json.dumps(artifact, indent=2, sort_keys=True) + "\n"


def load(name: str) -> dict[str, Any]:
    """A committed artifact (ABI and bytecode) by contract name."""
    path = ARTIFACTS / f"{name}.json"
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify instead of writing")
    args = parser.parse_args(argv)
    try:
        artifacts = compile_sources()
    except BuildError as exc:
        print(f"contracts: {exc}", file=sys.stderr)
        return 2
    stale = []
    for name, artifact in sorted(artifacts.items()):
        path = ARTIFACTS / f"{name}.json"
        text = render(artifact)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            ARTIFACTS.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT.parent)}")
    if stale:
        print(
            f"contracts: artifacts out of date: {', '.join(stale)} "
            "(run .venv/bin/python -m contracts.build)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
