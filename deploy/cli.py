"""The `lattice` command line.

    lattice devnet [--data-dir DIR] [--kafka HOST:PORT] [--rpc-port N] [--ws-port N]
    lattice broker [--host ADDRESS] [--broker-port N] [--data-dir DIR]
    lattice testnet --nodes N [--data-dir DIR]   (as root: network namespaces)
    lattice node --kafka HOST:PORT [--roles ROLE,...] [--name NAME] [--signers ADDR,...]
    lattice status [--data-dir DIR | --rpc URL]
    lattice topics [--data-dir DIR | --kafka HOST:PORT]
    lattice tail TOPIC [-n N] [--follow] [--data-dir DIR | --kafka HOST:PORT]
    lattice dag order FILE [--check]
    lattice dag run [--group-id ID] [--output-topic TOPIC]
    lattice execution run [--group-id ID] [--genesis FILE]
    lattice replay TARGET_DIR [--genesis FILE] [-q]
    lattice proposer (--key HEX | --devnet-index N)
    lattice schemas {list,check,freeze,generate}
    lattice worker | matcher run | verifier run | model import | keys create | deposit
      (see deploy/market_cli.py)
    lattice analytics run | analytics replay DIR | sql QUERY  (see deploy/analytics_cli.py)
    lattice ipfs run [--listen ADDR] [--peer MULTIADDR]      (see deploy/ipfs_peer.py)

Client commands find a running devnet through its data directory (`devnet.json`), or
talk to the cluster given by `--kafka`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from confluent_kafka import KafkaException

from deploy.endpoints import DevnetNotFound, Endpoints
from schemas.codec import CodecError, default_codec, jsonable
from streams.settings import Settings, SettingsError

if TYPE_CHECKING:
    from processors.abc import Processor, StateStore


class UsageError(RuntimeError):
    """Bad input from the user; exit code 2."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="devnet data directory (default .lattice)")
    parser.add_argument(
        "--kafka", metavar="HOST:PORT", help="bootstrap servers of an external Kafka cluster"
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="settings file (TOML)")
    parser.add_argument(
        "--metrics-port", type=int, metavar="N", help="serve Prometheus /metrics on port N"
    )


Subparsers = Any  # argparse's private _SubParsersAction


def _add_devnet(sub: Subparsers) -> None:
    devnet = sub.add_parser("devnet", help="run the whole network on this machine")
    _common(devnet)
    devnet.add_argument("--rpc-port", type=int, help="JSON-RPC and REST port (default 8545)")
    devnet.add_argument("--ws-port", type=int, help="WebSocket port (default 8546)")
    devnet.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    devnet.add_argument("--broker-port", type=int, help="embedded broker port (default: free)")
    devnet.add_argument("--proposers", type=int, help="block proposers to run (default 2)")
    devnet.add_argument("--replicas", type=int, help="execution replicas (default 1)")
    devnet.add_argument("--workers", type=int, help="local compute workers (default 1)")
    devnet.add_argument("--block-interval", type=float, help="seconds between a proposer's blocks")
    devnet.add_argument("--ghostdag-k", type=int, help="GHOSTDAG K (default 18)")
    devnet.add_argument(
        "--finality-depth", type=int, help="blue-score depth of finality (default 10)"
    )


def _add_testnet(sub: Subparsers) -> None:
    testnet = sub.add_parser(
        "testnet",
        help="a network of test hosts on this machine (network namespaces; as root)",
        description="One broker host, N node hosts and one worker host, each a network "
        "namespace with its own address on a private bridge; endpoints are printed and "
        "written to <data-dir>/testnet.json. Ctrl-C removes everything it made.",
    )
    _common(testnet)
    testnet.add_argument("--nodes", type=int, default=4, help="node hosts (default 4)")
    testnet.add_argument("--block-interval", type=float, help="seconds between a proposer's blocks")
    testnet.add_argument("--finality-depth", type=int, help="blue-score depth of finality")
    testnet.add_argument("--subnet", help="the bridge's subnet (default: a 10.x.y.0/24)")


def _add_broker(sub: Subparsers) -> None:
    broker = sub.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker and its archive for other hosts",
        description="The embedded broker (tansu) with its durable archive in "
        "<data-dir>/archive, listening on --host:--broker-port, which must be an address "
        "every node and worker can reach (it is also the address the broker advertises).",
    )
    _common(broker)
    broker.add_argument("--host", help="address to listen on and advertise (default 127.0.0.1)")
    broker.add_argument("--broker-port", type=int, help="port (default 9092)")


def _add_node(sub: Subparsers) -> None:
    from deploy.roles import ROLES

    roles = "\n".join(f"  {name:<10} {what}" for name, what in ROLES.items())
    node = sub.add_parser(
        "node",
        help="run one host of a network (gateway, execution replica, chosen roles)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Every node runs a gateway (JSON-RPC, WebSocket, REST, market and "
        "OpenAI endpoints,\ndashboard, metrics) serving from its own execution replica, "
        "which signs checkpoints\nwith the node's key (<data-dir>/node.key, made at the "
        "first start).\n\nroles (--roles, comma-separated; or `roles` in the settings "
        f"file):\n{roles}",
    )
    _common(node)
    node.add_argument("--roles", metavar="ROLE,...", help="roles beyond the gateway (above)")
    node.add_argument("--name", dest="node_name", help="the node's name (default: host name)")
    node.add_argument(
        "--signers", metavar="ADDR,...", help="checkpoint signers of the network (default: own)"
    )
    node.add_argument(
        "--peers", metavar="URL,...", help="other nodes' gateways, for content blocks"
    )
    node.add_argument(
        "--worker-key-file", type=Path, metavar="FILE", help="the key of the `worker` role"
    )
    node.add_argument("--rpc-port", type=int, help="JSON-RPC and REST port (default 8545)")
    node.add_argument("--ws-port", type=int, help="WebSocket port (default 8546)")
    node.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    node.add_argument("--genesis", type=Path, help="genesis file (default: dev genesis)")
    node.add_argument("--chain-id", type=int, help="chain id (default 27182)")
    node.add_argument("--block-interval", type=float, help="seconds between a proposer's blocks")
    node.add_argument("--ghostdag-k", type=int, help="GHOSTDAG K (default 18)")
    node.add_argument("--finality-depth", type=int, help="blue-score depth of finality")
    node.add_argument("--checkpoint-every", type=int, help="blocks between checkpoints")
    node.add_argument(
        "--snapshot-every", type=int, help="blocks between state snapshots served (default 200)"
    )
    node.add_argument(
        "--snapshot",
        metavar="URL",
        help="with no state yet: start from the state snapshot of the node at URL (checked "
        "against the network's signed checkpoints before serving)",
    )


def _add_ledger(sub: Subparsers) -> None:
    execution = sub.add_parser("execution", help="the EVM execution processor")
    execution_sub = execution.add_subparsers(
        dest="execution_command", required=True, metavar="ACTION"
    )
    execution_run = execution_sub.add_parser(
        "run", help="run it (blocks.virtual -> the optimistic head; final blocks -> executed)"
    )
    _common(execution_run)
    execution_run.add_argument("--group-id", default="lattice-execution")
    execution_run.add_argument("--state-dir", type=Path, help="default DATA_DIR/GROUP")
    execution_run.add_argument("--genesis", type=Path, help="genesis file (default: dev genesis)")
    signer = execution_run.add_mutually_exclusive_group()
    signer.add_argument(
        "--replica-index",
        type=int,
        default=0,
        help="sign checkpoints with the devnet's replica key N (default 0)",
    )
    signer.add_argument(
        "--checkpoint-key-file", type=Path, metavar="FILE", help="sign checkpoints with this key"
    )
    execution_run.add_argument(
        "--no-publish",
        action="store_true",
        help="a replica: publish only checkpoints, not receipts and blocks",
    )
    execution_run.add_argument("--checkpoint-every", type=int, help="blocks between checkpoints")
    execution_run.add_argument(
        "--snapshot-every", type=int, help="blocks between state snapshots (0: none)"
    )
    execution_run.add_argument(
        "--active-group",
        metavar="GROUP",
        help="publish as a hot standby: members with one --group-id and this group; the "
        "active one publishes, all sign checkpoints",
    )

    replay = sub.add_parser(
        "replay", help="rebuild the ledger state from the topics into a fresh directory"
    )
    _common(replay)
    replay.add_argument("target", type=Path, help="a new, empty directory for the store")
    replay.add_argument("--genesis", type=Path, help="genesis file (default: dev genesis)")
    replay.add_argument("-q", "--quiet", action="store_true", help="only the summary")


def _add_dag(sub: Subparsers) -> None:
    proposer = sub.add_parser("proposer", help="run one block proposer")
    _common(proposer)
    who = proposer.add_mutually_exclusive_group(required=True)
    who.add_argument("--key", help="secp256k1 private key, 0x-hex")
    who.add_argument("--key-file", type=Path, metavar="FILE", help="the key, 0x-hex, in a file")
    who.add_argument("--devnet-index", type=int, help="use the devnet's well-known key number N")
    proposer.add_argument("--block-interval", type=float, help="seconds between blocks (default 1)")
    proposer.add_argument("--ghostdag-k", type=int)
    proposer.add_argument("--finality-depth", type=int)

    dag = sub.add_parser("dag", help="GHOSTDAG tools")
    dag_sub = dag.add_subparsers(dest="dag_command", required=True, metavar="ACTION")
    dag_order = dag_sub.add_parser(
        "order", help="colour a DAG file (Kaspa test-vector format); one JSON line per block"
    )
    dag_order.add_argument("file", type=Path)
    dag_order.add_argument(
        "--check", action="store_true", help="compare with the file's Expected* fields"
    )
    dag_run = dag_sub.add_parser("run", help="run a DAG processor (blocks.proposed -> ordered)")
    _common(dag_run)
    dag_run.add_argument(
        "--group-id", default="lattice-dag", help="replica name (default lattice-dag)"
    )
    dag_run.add_argument(
        "--output-topic",
        help="where to write (default lattice.blocks.ordered; the virtual chain's changes "
        "go to lattice.blocks.virtual, or to TOPIC.virtual beside another)",
    )
    dag_run.add_argument(
        "--active-group",
        metavar="GROUP",
        help="a hot standby: members with one --group-id and this group; one is active",
    )
    dag_run.add_argument("--state-dir", type=Path, help="rocksdict store (default DATA_DIR/GROUP)")
    dag_run.add_argument("--ghostdag-k", type=int)
    dag_run.add_argument("--finality-depth", type=int)


def _add_log_tools(sub: Subparsers) -> None:
    status = sub.add_parser(
        "status", help="the ledger's head and finality, and each process's state and restarts"
    )
    _common(status)
    status.add_argument("--rpc", metavar="URL", help="a gateway's JSON-RPC URL (default: devnet)")

    topics = sub.add_parser("topics", help="list topics with their record counts")
    _common(topics)

    tail = sub.add_parser("tail", help="print a topic's records as JSON lines")
    _common(tail)
    tail.add_argument("topic", help="topic name, e.g. lattice.tx.submitted or tx.submitted")
    tail.add_argument(
        "-n",
        type=int,
        default=10,
        metavar="N",
        help="print the last N records (default 10; 0 for none, -1 for all)",
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")

    schemas = sub.add_parser("schemas", help="inspect and freeze the Avro schemas")
    schemas.add_argument(
        "action",
        choices=["list", "check", "freeze", "generate"],
        help="generate: write schemas/events.py (the typed event classes) from the schemas",
    )


def build_parser() -> argparse.ArgumentParser:
    from deploy import analytics_cli, ipfs_peer, market_cli

    parser = argparse.ArgumentParser(prog="lattice", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_devnet(sub)
    _add_node(sub)
    _add_broker(sub)
    _add_testnet(sub)
    _add_ledger(sub)
    _add_dag(sub)
    _add_log_tools(sub)
    market_cli.add_commands(sub, _common)
    analytics_cli.add_commands(sub, _common)
    ipfs_peer.add_commands(sub, _common)
    return parser


def load_settings(args: argparse.Namespace) -> Settings:
    flags = {
        "data_dir": getattr(args, "data_dir", None),
        "kafka": getattr(args, "kafka", None),
        "rpc_port": getattr(args, "rpc_port", None),
        "ws_port": getattr(args, "ws_port", None),
        "host": getattr(args, "host", None),
        "broker_port": getattr(args, "broker_port", None),
        "proposers": getattr(args, "proposers", None),
        "block_interval": getattr(args, "block_interval", None),
        "ghostdag_k": getattr(args, "ghostdag_k", None),
        "finality_depth": getattr(args, "finality_depth", None),
        "genesis_file": getattr(args, "genesis", None),
        "replicas": getattr(args, "replicas", None),
        "checkpoint_every": getattr(args, "checkpoint_every", None),
        "snapshot_every": getattr(args, "snapshot_every", None),
        "snapshot": getattr(args, "snapshot", None),
        "workers": getattr(args, "workers", None),
        "metrics_port": getattr(args, "metrics_port", None),
        "node_name": getattr(args, "node_name", None),
        "roles": getattr(args, "roles", None),
        "signers": getattr(args, "signers", None),
        "peers": getattr(args, "peers", None),
        "worker_key_file": getattr(args, "worker_key_file", None),
        "chain_id": getattr(args, "chain_id", None),
    }
    return Settings.load(config_file=getattr(args, "config", None), env=os.environ, overrides=flags)


def bootstrap_of(settings: Settings) -> str:
    if settings.kafka:
        return settings.kafka
    return Endpoints.read(settings.data_dir).kafka


def cmd_devnet(settings: Settings, out: TextIO) -> int:
    from deploy.devnet import Devnet  # the server stack loads only when serving

    Devnet(settings, out).run()
    return 0


def status_table(status: dict[str, Any]) -> str:
    """`lattice_status` as a terminal reads it: the head and finality, then one row per
    supervised process."""
    head = status["head"]
    lines = [f"head      {'(no genesis yet)' if head is None else int(head, 16)}"]
    checkpoints = status.get("checkpoints")
    if checkpoints is not None:
        lines.append(f"finalized {int(checkpoints['finalized'], 16)}")
    processes = status.get("processes")
    if processes:
        lines.append("")
        lines.append(f"{'PROCESS':<16} {'STATE':<11} {'PID':>7} {'RESTARTS':>8}  LAST EXIT")
        for p in processes:
            pid = "-" if p["pid"] is None else str(p["pid"])
            lines.append(
                f"{p['name']:<16} {p['state']:<11} {pid:>7} {p['restarts']:>8}  "
                f"{p['lastExit'] or '-'}"
            )
    return "\n".join(lines)


def cmd_status(settings: Settings, rpc: str | None, out: TextIO) -> int:
    from processors.market.client import rpc_call

    url = rpc or Endpoints.read(settings.data_dir).rpc
    status = rpc_call(url, "lattice_status", [], timeout=10)
    print(status_table(status), file=out)
    failed = [p for p in status.get("processes") or [] if p["state"] == "failed"]
    return 1 if failed else 0


def cmd_topics(settings: Settings, out: TextIO) -> int:
    from streams.admin import list_topics
    from streams.topics import BY_NAME

    rows = [("TOPIC", "PARTITIONS", "RECORDS", "POLICY", "SCHEMA")]
    for status in list_topics(bootstrap_of(settings)):
        spec = BY_NAME.get(status.name)
        rows.append(
            (
                status.name,
                str(status.partitions),
                str(status.records),
                spec.cleanup_policy if spec else "-",
                spec.schema if spec else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )
    return 0


def _line(message: Any) -> str:
    key = message.key()
    entry: dict[str, Any] = {
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp_ms": message.timestamp()[1],
        "key": key.decode(errors="replace") if key is not None else None,
    }
    try:
        decoded = default_codec().decode(message.value())
        entry["schema"] = decoded.name
        entry["value"] = jsonable(decoded.record)
    except CodecError as exc:
        entry["error"] = str(exc)
        entry["value_hex"] = "0x" + (message.value() or b"").hex()
    return json.dumps(entry, separators=(",", ":"))


def cmd_tail(settings: Settings, name: str, count: int, follow: bool, out: TextIO) -> int:
    from streams.kafka import Reader
    from streams.topics import BY_NAME

    reader = Reader(bootstrap_of(settings), client_id="lattice-tail")
    try:
        # Accept the short form (`tx.submitted`) for catalogue topics.
        candidates = [name] if name in BY_NAME else [name, f"lattice.{name}"]
        for topic_name in candidates:
            try:
                ends = reader.end_offsets(topic_name)
                break
            except KeyError:
                continue
        else:
            raise UsageError(f"topic {name!r} does not exist (see `lattice topics`)")
        starts = {
            (topic_name, p): low if count < 0 else max(low, end - count)
            for p, (low, end) in ends.items()
        }
        until = {(topic_name, p): end for p, (_, end) in ends.items()}
        backlog = list(reader.read(starts, until=until))
        backlog.sort(key=lambda m: (m.timestamp()[1], m.partition(), m.offset()))
        if count >= 0:
            backlog = backlog[len(backlog) - count :] if count else []
        for message in backlog:
            print(_line(message), file=out, flush=True)
        if follow:
            resume = {(topic_name, p): end for p, (_, end) in ends.items()}
            for message in backlog:
                position = (topic_name, message.partition())
                resume[position] = max(resume[position], message.offset() + 1)
            for message in reader.read(resume, follow=True):
                print(_line(message), file=out, flush=True)
    finally:
        reader.close()
    return 0


def serve(
    processor: Processor[Any],
    store: StateStore,
    settings: Settings,
    stop: Any,
    active_group: str | None = None,
) -> int:
    """Run a processor over its store with the one runtime until `stop` (as a hot
    standby member with `active_group`)."""
    from processors.runtime import Runtime

    try:
        Runtime(
            processor,
            store,
            bootstrap_of(settings),
            kafka_config=settings.kafka_config,
            active_group=active_group,
        ).run(stop)
    finally:
        store.close()
    return 0


def _private_key(text: str, flag: str) -> Any:
    from coincurve import PrivateKey

    try:
        return PrivateKey(bytes.fromhex(text.strip().removeprefix("0x")))
    except ValueError as exc:
        raise UsageError(f"{flag}: not a secp256k1 private key ({exc})") from None


def _key_file(path: Path, flag: str) -> Any:
    try:
        return _private_key(path.read_text(), f"{flag} {path}")
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {path} ({exc.strerror})") from None


def cmd_proposer(settings: Settings, args: argparse.Namespace) -> int:
    from processors.proposer.processor import ProposerProcessor, devnet_key
    from processors.runtime import configure_logging, stop_on_signals
    from processors.state import MemoryStore

    if args.key is not None:
        key = _private_key(args.key, "--key")
    elif args.key_file is not None:
        key = _key_file(args.key_file, "--key-file")
    else:
        index = args.devnet_index
        key = devnet_key(int(index or 0))
    configure_logging(settings.log_level, settings.metrics_port)
    stop = stop_on_signals()
    processor = ProposerProcessor(
        key,
        chain_id=settings.chain_id,
        interval_s=settings.block_interval,
        k=settings.ghostdag_k,
        finality_depth=settings.finality_depth,
    )
    print(f"proposer {processor.address} on {bootstrap_of(settings)}", flush=True)
    return serve(processor, MemoryStore(), settings, stop)


def cmd_dag_run(settings: Settings, args: argparse.Namespace) -> int:
    from processors.dag.blocks import genesis_hash
    from processors.dag.processor import (
        ORDERED,
        PROPOSED,
        DagConfig,
        DagProcessor,
        virtual_topic,
    )
    from processors.runtime import configure_logging, stop_on_signals
    from processors.state import RocksStore
    from streams.admin import ensure_topics
    from streams.topics import TopicSpec

    configure_logging(settings.log_level, settings.metrics_port)
    stop = stop_on_signals()
    bootstrap = bootstrap_of(settings)
    output = ORDERED
    if args.output_topic and args.output_topic != ORDERED.name:
        output = TopicSpec(args.output_topic, ORDERED.schema, ORDERED.key, 1, doc=ORDERED.doc)
        outputs = [output, virtual_topic(output)]
        ensure_topics(bootstrap, outputs, replication=settings.replication_factor)
    config = DagConfig(
        genesis_hash(settings.chain_id),
        k=settings.ghostdag_k,
        finality_depth=settings.finality_depth,
    )
    state_dir = args.state_dir or settings.data_dir / args.group_id
    processor = DagProcessor(config, name=args.group_id, output=output)
    standby = f" (standby set {args.active_group})" if args.active_group else ""
    print(f"dag processor {args.group_id}: {PROPOSED.name} -> {output.name}{standby}", flush=True)
    return serve(processor, RocksStore(state_dir), settings, stop, args.active_group)


def _genesis(settings: Settings) -> Any:
    from deploy.network import NetworkError, load_genesis

    try:
        return load_genesis(settings)
    except NetworkError as exc:
        raise UsageError(str(exc)) from None


def cmd_replay(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from processors.execution.replay import replay
    from processors.execution.transactions import ChainRules

    rules = ChainRules(settings.chain_id, settings.max_tx_bytes, settings.block_gas_limit)

    def report(number: int, root: bytes, live: bytes | None) -> None:
        if not args.quiet:
            verdict = "no live root" if live is None else "ok" if live == root else "DIFFERS"
            print(f"{number} 0x{root.hex()} {verdict}", file=out, flush=True)

    try:
        result = replay(bootstrap_of(settings), args.target, _genesis(settings), rules, report)
    except FileExistsError as exc:
        raise UsageError(str(exc)) from None
    print(
        f"replayed {result.blocks} blocks into {args.target}: head state root "
        f"0x{result.head_root.hex()}; {len(result.mismatches)} differ from the live ledger, "
        f"{result.unpublished} not yet published live",
        file=out,
    )
    for number in result.mismatches:
        print(f"lattice: state root differs at block {number}", file=sys.stderr)
    return 1 if result.mismatches else 0


def cmd_execution_run(settings: Settings, args: argparse.Namespace) -> int:
    from processors.execution.checkpoints import replica_key
    from processors.execution.processor import ExecutionProcessor
    from processors.execution.transactions import ChainRules
    from processors.runtime import configure_logging, stop_on_signals
    from processors.state import RocksStore

    genesis = _genesis(settings)
    configure_logging(settings.log_level, settings.metrics_port)
    stop = stop_on_signals()
    rules = ChainRules(settings.chain_id, settings.max_tx_bytes, settings.block_gas_limit)
    store = RocksStore(args.state_dir or settings.data_dir / args.group_id)
    processor = ExecutionProcessor(
        genesis,
        rules,
        name=args.group_id,
        publish=not args.no_publish,
        checkpoint_key=(
            _key_file(args.checkpoint_key_file, "--checkpoint-key-file")
            if args.checkpoint_key_file
            else replica_key(args.replica_index)
        ),
        checkpoint_every=settings.checkpoint_every,
        snapshot_every=settings.snapshot_every,
    )
    processor.restore(store)
    head = processor.ledger.head
    print(
        f"execution {args.group_id}: head {head.block_number} state root 0x{head.state_root.hex()}",
        flush=True,
    )
    return serve(processor, store, settings, stop, args.active_group)


def cmd_dag_order(path: Path, check: bool, out: TextIO) -> int:
    from processors.dag.vectors import DagFile, DagFileError, mismatches, order

    try:
        dag = DagFile.load(path)
        results = list(order(dag))
    except DagFileError as exc:
        raise UsageError(f"{path}: {exc}") from None
    for result in results:
        print(json.dumps(result, separators=(",", ":")), file=out)
    if not check:
        return 0
    problems = [p for spec, r in zip(dag.blocks, results, strict=True) for p in mismatches(spec, r)]
    for problem in problems:
        print(f"lattice: mismatch: {problem}", file=sys.stderr)
    print(f"checked {len(results)} blocks: {len(problems)} mismatches", file=sys.stderr)
    return 1 if problems else 0


def cmd_schemas(action: str, out: TextIO) -> int:
    from schemas import evolution

    codec = default_codec()
    if action == "list":
        for name in codec.names():
            print(f"{name}  {codec.current[name].fingerprint_hex}", file=out)
        return 0
    if action == "generate":
        from schemas.generate import EVENTS_FILE, write

        changed = write()
        print(f"{EVENTS_FILE}: {'written' if changed else 'already up to date'}", file=out)
        return 0
    if action == "check":
        from schemas.generate import EVENTS_FILE, render

        problems = evolution.check(codec)
        if EVENTS_FILE.read_text() != render():
            problems.append(f"{EVENTS_FILE} is stale: run `lattice schemas generate`")
        for problem in problems:
            print(problem, file=out)
        print(f"{len(codec.names())} schemas, {len(problems)} problems", file=out)
        return 1 if problems else 0
    written = evolution.freeze(codec)
    for path in written:
        print(f"froze {path}", file=out)
    print(f"{len(written)} new versions frozen", file=out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "schemas":
            return cmd_schemas(args.action, out)
        if args.command == "dag" and args.dag_command == "order":
            return cmd_dag_order(args.file, args.check, out)
        settings = load_settings(args)
        if args.command == "devnet":
            return cmd_devnet(settings, out)
        if args.command == "testnet":
            from deploy.testnet import Testnet

            Testnet(
                args.nodes,
                settings.data_dir,
                out,
                block_interval=settings.block_interval,
                finality_depth=settings.finality_depth,
                subnet=args.subnet,
            ).run()
            return 0
        if args.command == "broker":
            from deploy.log import serve_log

            serve_log(settings, out)
            return 0
        if args.command == "node":
            from deploy.node import run_node  # the server stack loads only when serving

            run_node(settings, out)
            return 0
        if args.command == "dag":
            return cmd_dag_run(settings, args)
        if args.command == "replay":
            return cmd_replay(settings, args, out)
        if args.command == "execution":
            return cmd_execution_run(settings, args)
        if args.command == "proposer":
            return cmd_proposer(settings, args)
        if args.command == "status":
            return cmd_status(settings, args.rpc, out)
        if args.command == "topics":
            return cmd_topics(settings, out)
        if args.command == "tail":
            return cmd_tail(settings, args.topic, args.n, args.follow, out)
        from deploy import analytics_cli, ipfs_peer, market_cli

        for commands in (market_cli, analytics_cli, ipfs_peer):
            result: int | None = commands.run(settings, args, bootstrap_of, out)
            if result is not None:
                return result
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) left; stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UsageError, SettingsError) as exc:
        print(f"lattice: error: {exc}", file=sys.stderr)
        return 2
    except (DevnetNotFound, KafkaException, RuntimeError, ValueError, OSError) as exc:
        print(f"lattice: error: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
