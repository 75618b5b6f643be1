"""The deployment files, checked as far as this machine can without a container engine or
a cluster: the compose file parses with docker-compose and is a working Kafka cluster
configuration, the manifests pass the Kubernetes schemas, every Lattice command in them
parses with the real CLI, and the image copies every package."""

from __future__ import annotations

import base64
import copy
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy.cli import build_parser, load_settings
from deploy.node import parse_roles

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
MANIFESTS = ROOT / "deploy" / "k8s" / "lattice.yaml"


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def lattice_args(command: list[str]) -> list[str]:
    """The `lattice` arguments of a container command."""
    parser = build_parser()
    args = parser.parse_args(command)
    load_settings(args)  # the flags are settings it accepts
    if getattr(args, "roles", None):
        parse_roles(args.roles)
    return command


def test_docker_compose_parses_the_compose_file() -> None:
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose is missing (the Makefile installs Debian's package)"
    result = subprocess.run(
        [tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_kafka_cluster_can_start_and_keeps_acknowledged_records() -> None:
    services = compose()["services"]
    brokers = {n: s for n, s in services.items() if s.get("image", "").startswith("apache/kafka")}
    assert len(brokers) == 3
    env = [b["environment"] for b in brokers.values()]
    cluster_id = {e["CLUSTER_ID"] for e in env}
    assert len(cluster_id) == 1
    (raw,) = cluster_id
    assert len(base64.urlsafe_b64decode(raw + "==")) == 16  # a UUID, as kafka-storage wants
    assert {e["KAFKA_NODE_ID"] for e in env} == {1, 2, 3}
    voters = env[0]["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert sorted(v.split("@")[1].split(":")[0] for v in voters) == sorted(brokers)
    for name, broker in brokers.items():
        data = broker["environment"]["KAFKA_LOG_DIRS"]
        assert any(v.endswith(":" + data) for v in broker["volumes"]), name
        assert broker["volumes"][0].split(":")[0] in compose()["volumes"]
    insync = {int(e["KAFKA_MIN_INSYNC_REPLICAS"]) for e in env}
    nodes = {n: s for n, s in services.items() if n not in brokers}
    for name, node in nodes.items():
        replication = int(node["environment"]["LATTICE_REPLICATION_FACTOR"])
        # Topics Lattice creates can take writes with one broker down, and lose none.
        assert all(1 < i < replication <= len(brokers) for i in insync), name
        assert node["environment"]["LATTICE_KAFKA"].count(":9092") == len(brokers)


def test_every_lattice_service_runs_a_command_the_cli_accepts() -> None:
    services = compose()["services"]
    commands = [s["command"] for s in services.values() if "build" in s]
    assert sum(c[0] == "node" for c in commands) >= 3
    once = [c for c in commands if c[0] == "node" and "dag" in c[c.index("--roles") + 1]]
    assert len(once) == 2  # the once-per-network roles: an active member and a standby
    for command in commands:
        lattice_args(command)
    with pytest.raises(SystemExit):
        lattice_args(["node", "--no-such-flag"])


def manifests() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]


def test_the_manifests_pass_the_kubernetes_schemas() -> None:
    docs = manifests()
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Service", "ConfigMap"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "StatefulSet"))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


def test_nodes_keep_their_data_and_run_commands_the_cli_accepts() -> None:
    docs = {d["kind"]: d for d in manifests()}
    nodes = docs["StatefulSet"]["spec"]
    assert nodes["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (container,) = nodes["template"]["spec"]["containers"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    script = container["args"][0]
    assert "exec lattice node " in script
    for line in script.splitlines():
        if line.startswith("exec lattice "):
            command = shlex.split(line.removeprefix("exec lattice "))
            for roles in re.findall(r"roles=([a-z,]+)", script):
                filled = [a.replace("$HOSTNAME", "lattice-node-0") for a in command]
                filled = [a.replace("$PEERS", "http://lattice-node-1:8545") for a in filled]
                lattice_args([a.replace("$roles", roles) for a in filled])
    (worker,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    lattice_args([a.replace("$(WORKER_KEY)", "0x" + "11" * 32) for a in worker["args"]])


def test_the_image_copies_every_package() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) ", dockerfile, re.M))
    for source in copied:
        assert (ROOT / source).exists(), source
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= copied
    assert "constraints.txt" in dockerfile and 'ENTRYPOINT ["lattice"]' in dockerfile
