from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from contracts import build


def test_committed_artifacts_match_the_sources() -> None:
    assert build.main(["--check"]) == 0
    token = build.load("LatticeToken")
    assert token["bytecode"].startswith("0x6080") and len(token["abi"]) > 10


def test_an_edited_source_no_longer_matches(tmp_path: Path) -> None:
    shutil.copytree(build.SOURCES, tmp_path / "src")
    path = tmp_path / "src" / "LatticeToken.sol"
    path.write_text(path.read_text().replace("decimals = 18", "decimals = 6"))
    edited = build.compile_sources(tmp_path / "src")["LatticeToken"]
    assert build.render(edited) != (build.ARTIFACTS / "LatticeToken.json").read_text()


def test_compile_errors_are_reported(tmp_path: Path) -> None:
    (tmp_path / "Broken.sol").write_text("pragma solidity ^0.8.0; contract Broken { uint x = ; }")
    with pytest.raises(build.BuildError, match=r"Broken\.sol"):
        build.compile_sources(tmp_path)
