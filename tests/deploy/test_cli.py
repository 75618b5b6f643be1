"""The `lattice` client commands against the session broker."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy.cli import main
from schemas.events import Position
from streams.broker import EmbeddedBroker
from streams.kafka import Producer
from streams.topics import TopicSpec


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_client_commands_without_a_devnet_say_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run("topics", "--data-dir", str(tmp_path))
    assert code == 1
    assert "no devnet is running" in capsys.readouterr().err


def test_stale_devnet_file_is_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "devnet.json").write_text(
        json.dumps(
            {
                "pid": 2**22 + 7,
                "kafka": "127.0.0.1:1",
                "embedded": True,
                "rpc": "",
                "ws": "",
                "chain_id": 1,
            }
        )
    )
    assert run("tail", "tx.submitted", "--data-dir", str(tmp_path))[0] == 1
    assert "has exited" in capsys.readouterr().err


@pytest.mark.broker
def test_topics_and_tail(
    broker: EmbeddedBroker, make_topic: Callable[..., TopicSpec], capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_topic(schema="lattice.common.Position", partitions=2)
    producer = Producer(broker.bootstrap)
    for i in range(12):
        producer.send(
            spec,
            Position(topic="t", partition=0, offset=i),
            key=f"k{i}",
            timestamp_ms=1_700_000_000_000 + i,
        )
    producer.close()

    code, out = run("topics", "--kafka", broker.bootstrap)
    assert code == 0
    row = next(line.split() for line in out.splitlines() if line.startswith(spec.name))
    assert row[1:3] == ["2", "12"]

    code, out = run("tail", spec.name, "-n", "3", "--kafka", broker.bootstrap)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["value"]["offset"] for line in lines] == [9, 10, 11]
    assert lines[0]["schema"] == "lattice.common.Position" and lines[0]["key"] == "k9"

    code, out = run("tail", spec.name, "-n", "-1", "--kafka", broker.bootstrap)
    assert len(out.splitlines()) == 12

    assert run("tail", "no.such.topic", "--kafka", broker.bootstrap)[0] == 2
    assert "does not exist" in capsys.readouterr().err


def test_schemas_commands() -> None:
    code, out = run("schemas", "check")
    assert code == 0 and "0 problems" in out
    code, out = run("schemas", "list")
    assert "lattice.tx.TransactionSubmitted" in out


def test_bad_settings_are_usage_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATTICE_RPC_PORT", "eighty")
    assert run("topics")[0] == 2
    assert "rpc_port" in capsys.readouterr().err


@pytest.mark.broker
def test_tail_follow_prints_new_records_as_they_arrive(
    broker: EmbeddedBroker, make_topic: Callable[..., TopicSpec]
) -> None:
    spec = make_topic(schema="lattice.common.Position", partitions=2)
    producer = Producer(broker.bootstrap)
    producer.send(spec, Position(topic="old", partition=0, offset=1), key="k").result(10)
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "tail",
            spec.name,
            "-n",
            "1",
            "--follow",
            "--kafka",
            broker.bootstrap,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        # The backlog line proves the follower reached the end; what comes next is live.
        assert json.loads(follower.stdout.readline())["value"]["topic"] == "old"
        producer.send(spec, Position(topic="live", partition=0, offset=42), key="j")
        producer.flush()
        line = json.loads(follower.stdout.readline())
        assert line["value"] == {"topic": "live", "partition": 0, "offset": 42}
    finally:
        producer.close()
        follower.terminate()
        follower.wait(10)


REFERENCE = Path(__file__).parents[3] / "shared" / "reference" / "ghostdag"


@pytest.mark.parametrize("index", range(6))
def test_dag_order_check_passes_the_reference_vectors(index: int) -> None:
    code, out = run("dag", "order", "--check", str(REFERENCE / f"dag{index}.json"))
    assert code == 0
    first = json.loads(out.splitlines()[0])
    assert set(first) == {
        "id",
        "selected_parent",
        "mergeset_blues",
        "mergeset_reds",
        "blue_score",
        "blue_work",
    }


def test_dag_order_check_fails_on_a_wrong_expectation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads((REFERENCE / "dag0.json").read_text())
    document["Blocks"][-1]["ExpectedSelectedParent"] = "nope"
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(document))
    assert run("dag", "order", "--check", str(path))[0] == 1
    assert "expected 'nope'" in capsys.readouterr().err


def test_dag_order_bad_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"K": 2, "GenesisID": "0", "Blocks": [{"ID": "1", "Parents": ["9"]}]}')
    assert run("dag", "order", str(path))[0] == 2
    assert "unknown parent '9'" in capsys.readouterr().err
    assert run("dag", "order", str(tmp_path / "missing.json"))[0] == 2
