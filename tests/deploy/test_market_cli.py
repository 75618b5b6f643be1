"""The market and analytics commands' handling of bad input (no devnet needed)."""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import pytest

from deploy.cli import main


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(args), out=out), out.getvalue()


def test_model_import_refuses_what_is_not_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    common = ["--name", "x", "--dev-account", "1", "--rpc", "http://127.0.0.1:1"]
    common += ["--data-dir", str(tmp_path)]
    code, _ = run("model", "import", str(tmp_path / "notes.txt"), *common)
    assert code == 2 and "Hugging Face model directory or a .onnx file" in capsys.readouterr().err
    (tmp_path / "hf").mkdir()
    code, _ = run("model", "import", str(tmp_path / "hf"), *common)
    assert code == 2 and "needs its config (config.json)" in capsys.readouterr().err
    code, _ = run("deposit", "0", "--dev-account", "1", "--data-dir", str(tmp_path))
    assert code == 2 and "positive" in capsys.readouterr().err


def test_sql_reports_missing_databases_bad_sql_and_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run("sql", "SELECT 1", "--data-dir", str(tmp_path))
    assert code == 1 and "no analytics database" in capsys.readouterr().err
    db = tmp_path / "a.duckdb"
    with duckdb.connect(str(db)) as writer:
        writer.execute("CREATE TABLE t AS SELECT 42::UHUGEINT * 10000000000000000000 AS wei")
    code, out = run("sql", "SELECT * FROM t", "--db", str(db), "--format", "json")
    assert code == 0 and out.strip() == '{"wei": "420000000000000000000"}'
    code, out = run("sql", "SELECT * FROM t", "--db", str(db), "--format", "csv")
    assert out.splitlines() == ["wei", "420000000000000000000"]
    assert run("sql", "DROP TABLE t", "--db", str(db))[0] == 1
    assert "read-only" in capsys.readouterr().err
    assert run("sql", "SELEC 1", "--db", str(db))[0] == 1
    assert "syntax error" in capsys.readouterr().err
    assert run("sql", "--saved", "nope", "--db", str(db))[0] == 2
