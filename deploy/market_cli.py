"""The market's commands.

    lattice worker [run] [--price WEI_PER_HOUR] [--stake WEI] [--key HEX | --devnet-index N]
                   [--threads N]
    lattice worker status|unstake|withdraw-stake [--key HEX | --devnet-index N]
    lattice matcher run
    lattice verifier run|replay [--key HEX]
    lattice model import PATH --name NAME [--key HEX | --dev-account N]
    lattice keys create --account ADDRESS [--key HEX | --dev-account N]
    lattice deposit AMOUNT_WEI [--key HEX | --dev-account N]

Client commands (model import, keys, deposit) reach a running devnet through its data
directory (`devnet.json`) or the gateway given by `--rpc URL`, like every other client
command. Keys are secp256k1 private keys in hex; `--dev-account N` uses the development
mnemonic's account N (devnet only).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from deploy.endpoints import Endpoints
from processors.compute.models import DIRECTORY_TASKS
from streams.settings import Settings


class MarketUsageError(RuntimeError):
    """Bad input for a market command."""


def _client(parser: argparse.ArgumentParser, who: str) -> None:
    parser.add_argument("--rpc", metavar="URL", help="gateway URL (default: the devnet's)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--key", help=f"{who}'s private key, 0x-hex")
    keys.add_argument("--dev-account", type=int, help=f"{who}: development account N (devnet)")


def _standby(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--active-group",
        metavar="GROUP",
        help="a hot standby: the members with this group read everything, one decides "
        "(the verifiers share the settler key)",
    )


def add_commands(sub: argparse._SubParsersAction, common: object) -> None:  # type: ignore[type-arg]
    add = common  # the CLI's --data-dir/--kafka/--config adder
    worker = sub.add_parser(
        "worker",
        help="run a compute node, or take it out of the market",
        description="run: serve jobs (the default). status: the node's stake, price and "
        "standing in the market. unstake: stop being offered work and "
        "start the unbonding period (the stake can still be slashed until it ends). "
        "withdraw-stake: take the stake back once the period is over.",
    )
    worker.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=["run", "status", "unstake", "withdraw-stake"],
    )
    add(worker)  # type: ignore[operator]
    worker.add_argument(
        "--price", type=int, metavar="WEI_PER_HOUR", help="price of an hour of compute"
    )
    worker.add_argument("--stake", type=int, metavar="WEI", help="stake sent with the registration")
    worker.add_argument("--threads", type=int, help="CPU threads per inference (default 1)")
    worker.add_argument("--rpc", metavar="URL", help="gateway URL (default: the devnet's)")
    who = worker.add_mutually_exclusive_group()
    who.add_argument("--key", help="the node's private key, 0x-hex (its address is the node id)")
    who.add_argument("--key-file", type=Path, help="the node's private key, 0x-hex, in a file")
    who.add_argument("--devnet-index", type=int, help="the devnet's well-known worker key N")

    matcher = sub.add_parser("matcher", help="the job matcher")
    matcher.add_argument("action", choices=["run"])
    add(matcher)  # type: ignore[operator]
    _standby(matcher)

    verifier = sub.add_parser("verifier", help="the verifier and settler")
    verifier.add_argument(
        "action", choices=["run", "replay"], help="replay: rebuild verdicts and compare"
    )
    add(verifier)  # type: ignore[operator]
    verifier.add_argument("--key", help="settler key, 0x-hex (default: the devnet's settler)")
    verifier.add_argument("--rpc", metavar="URL", help="gateway to fetch model blocks from")
    _standby(verifier)

    model = sub.add_parser("model", help="models on the network")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    imp = model_sub.add_parser("import", help="import a Hugging Face directory or .onnx file")
    add(imp)  # type: ignore[operator]
    imp.add_argument("path", type=Path)
    imp.add_argument("--name", required=True, help="the model's name on the network")
    imp.add_argument(
        "--task",
        choices=DIRECTORY_TASKS,
        help="what the model does (default: read from the directory: sentence-transformers' "
        "modules.json, a classification head, CLIP's towers, else text generation)",
    )
    _client(imp, "the owner")

    keys = sub.add_parser("keys", help="API keys for the OpenAI-compatible endpoints")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key spending ACCOUNT's deposit")
    add(create)  # type: ignore[operator]
    create.add_argument("--account", required=True, help="the paying account's address")
    _client(create, "the account")

    deposit = sub.add_parser("deposit", help="prepay into JobMarket")
    add(deposit)  # type: ignore[operator]
    deposit.add_argument("amount", type=int, help="wei")
    _client(deposit, "the depositor")


def _key(args: argparse.Namespace) -> bytes:
    from processors.execution.genesis import DEV_KEYS

    text, flag = getattr(args, "key", None), "--key"
    if getattr(args, "key_file", None):
        flag = f"--key-file {args.key_file}"
        try:
            text = args.key_file.read_text().strip()
        except OSError as exc:
            raise MarketUsageError(f"{flag}: cannot read it ({exc.strerror})") from None
    if text:
        try:
            key = bytes.fromhex(text.removeprefix("0x"))
        except ValueError:
            raise MarketUsageError(f"{flag}: not hex") from None
        if len(key) != 32:
            raise MarketUsageError(f"{flag}: a private key is 32 bytes")
        return key
    index = args.dev_account if getattr(args, "dev_account", None) is not None else None
    if index is None:
        raise MarketUsageError("give --key or --dev-account")
    if not 0 <= index < len(DEV_KEYS):
        raise MarketUsageError(f"--dev-account: 0..{len(DEV_KEYS) - 1}")
    return bytes.fromhex(DEV_KEYS[index][2:])


def _rpc(settings: Settings, args: argparse.Namespace) -> str:
    return str(args.rpc or Endpoints.read(settings.data_dir).rpc)


def cmd_worker(
    settings: Settings, args: argparse.Namespace, bootstrap_of: Callable[[Settings], str]
) -> int:
    """`bootstrap_of` is asked only when running a node (unstake and withdraw-stake use
    the gateway alone)."""
    from gpu_worker.processor import Worker
    from processors.execution.genesis import address_of, devnet_key
    from processors.runtime import configure_logging, stop_on_signals

    changes = {
        k: v
        for k, v in (
            ("worker_price", args.price),
            ("worker_stake", args.stake),
            ("worker_threads", args.threads),
        )
        if v is not None
    }
    settings = settings.replace(**changes)
    key = _key(args) if args.key or args.key_file else devnet_key("worker", args.devnet_index or 0)
    rpc = args.rpc or _devnet_rpc(settings)
    if args.action != "run" and rpc is None:
        raise MarketUsageError("give --rpc (no devnet found in the data directory)")
    if args.action == "status":
        from gpu_worker.staking import node_status

        assert rpc is not None
        print(_status_text(node_status(rpc, address_of(key))), flush=True)
        return 0
    if args.action == "withdraw-stake":
        from gpu_worker.staking import withdraw_stake

        assert rpc is not None
        amount = withdraw_stake(rpc, _chain_id(rpc), key)
        print(f"withdrew {amount} wei of stake to 0x{address_of(key).hex()}", flush=True)
        return 0
    if args.action == "unstake":
        import time

        from gpu_worker.staking import leave

        assert rpc is not None
        stake, until = leave(rpc, _chain_id(rpc), key)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until))
        print(
            f"node 0x{address_of(key).hex()} is leaving: no new jobs; its {stake} wei of stake "
            f"is withdrawable from {when} (`lattice worker withdraw-stake`)",
            flush=True,
        )
        return 0
    configure_logging(settings.log_level, settings.metrics_port)
    stop = stop_on_signals()
    worker = Worker(settings, bootstrap_of(settings), key, rpc)
    hw = worker.hardware
    print(
        f"worker 0x{worker.address.hex()}: {hw.device_name}, {hw.cpu_cores} cores, "
        f"{hw.memory_bytes >> 20} MiB, runtimes {', '.join(hw.runtimes)}",
        flush=True,
    )
    worker.run(stop)
    return 0


def _status_text(status: dict[str, Any]) -> str:
    import time

    lines = [
        f"node      {status['node']}",
        f"stake     {status['stake_wei']} wei on the ledger",
        f"price     {status['price_wei_per_hour']} wei per hour",
    ]
    if status["withdrawable_at"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(status["withdrawable_at"]))
        lines.append(f"leaving   stake withdrawable from {when}")
    market = status["market"]
    if market is None:
        lines.append("market    not registered (start `lattice worker`)")
    else:
        seen = time.strftime("%H:%M:%S UTC", time.gmtime(market["last_seen_ms"] / 1000))
        lines.append(
            f"market    reputation {market['reputation_bps']} bps, {market['accepted']} "
            f"accepted, {market['rejected']} rejected, {market['jobs_in_flight']} in flight, "
            f"last seen {seen}"
        )
    return "\n".join(lines)


def _devnet_rpc(settings: Settings) -> str | None:
    try:
        return Endpoints.read(settings.data_dir).rpc
    except RuntimeError:
        return None


def cmd_matcher(settings: Settings, args: argparse.Namespace, bootstrap: str) -> int:
    from processors.market.processor import Matcher
    from processors.runtime import Runtime, configure_logging, stop_on_signals
    from processors.state import MemoryStore

    configure_logging(settings.log_level, settings.metrics_port)
    stop = stop_on_signals()
    print(f"matcher on {bootstrap}{_standing(args)}", flush=True)
    config = settings.kafka_config
    group = args.active_group
    Runtime(
        Matcher(settings), MemoryStore(), bootstrap, kafka_config=config, active_group=group
    ).run(stop)
    return 0


def _standing(args: argparse.Namespace) -> str:
    return f" (standby set {args.active_group})" if args.active_group else ""


def cmd_verifier(settings: Settings, args: argparse.Namespace, bootstrap: str) -> int:
    from processors.execution.genesis import devnet_key
    from processors.runtime import Runtime, configure_logging, stop_on_signals
    from processors.state import MemoryStore
    from processors.verifier.processor import Verifier

    key = _key(args) if args.key else devnet_key("settler")
    peers = [args.rpc] if args.rpc else [r for r in [_devnet_rpc(settings)] if r]
    if args.action == "replay":
        from processors.verifier.replay import replay

        report = replay(settings, bootstrap, key, peers)
        for difference in report.differences:
            print(f"differs: {difference}", flush=True)
        print(
            f"replayed {report.verdicts} verdicts and {report.settlements} settlements: "
            f"{len(report.differences)} differ from the live ones",
            flush=True,
        )
        return 1 if report.differences else 0
    configure_logging(settings.log_level, settings.metrics_port)
    stop = stop_on_signals()
    verifier = Verifier(settings, key, peers)
    settler = f"settler 0x{verifier.address.hex()}"
    print(f"verifier ({settler}) on {bootstrap}{_standing(args)}", flush=True)
    config = settings.kafka_config
    group = args.active_group
    Runtime(verifier, MemoryStore(), bootstrap, kafka_config=config, active_group=group).run(stop)
    return 0


def cmd_model_import(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    import json

    from processors.compute.models import ModelImportError, canonical_json, import_model
    from processors.execution.genesis import MODEL_REGISTRY
    from processors.market.chain import register_model_call
    from processors.market.client import http_post, send_call
    from processors.market.content import Blockstore

    key = _key(args)
    rpc = _rpc(settings, args).rstrip("/")
    store = Blockstore(Path(settings.data_dir) / "import-cache")

    def progress(text: str) -> None:
        print(f"  {text}", file=out, flush=True)

    try:
        budget = settings.worker_memory_bytes
        manifest = import_model(
            args.path, args.name, store, progress, memory_budget=budget, task=args.task
        )
    except ModelImportError as exc:
        raise MarketUsageError(str(exc)) from None
    doc = manifest.document
    parts = [p for p in ("onnx", "weights", "tokenizer", "source") if p in doc]
    cids = [c["cid"] for p in parts for c in doc[p]["chunks"]] + [doc[p]["cid"] for p in parts]
    blocks = [*cids, manifest.cid]
    progress(f"uploading {len(blocks)} blocks to {rpc}")
    step = max(len(blocks) // 10, 256)
    for done, cid in enumerate(blocks, 1):
        http_post(f"{rpc}/v1/content", store.get(cid), idempotent=True)
        if done % step == 0:
            progress(f"uploaded {done} of {len(blocks)} blocks")
    assert store.get(manifest.cid) == canonical_json(doc)
    progress(f"registering {args.name} -> {manifest.cid} in ModelRegistry")
    chain_id = int(_chain_id(rpc))
    tx_hash, _ = send_call(
        rpc,
        chain_id,
        key,
        MODEL_REGISTRY,
        register_model_call(args.name, manifest.cid, doc["model_type"]),
    )
    answer = http_post(
        f"{rpc}/v1/models", json.dumps({"transaction_hash": tx_hash}).encode(), "application/json"
    )
    print(
        f"model {answer['model']} version {answer['version']} ({doc['task']}): "
        f"manifest {manifest.cid}, "
        f"{doc['parameter_count']} parameters, needs {doc['vram_required_bytes'] >> 20} MiB",
        file=out,
    )
    for part in parts:  # what `ipfs add` prints for the same files
        print(f"  {part}: {doc[part]['size']:,} bytes, IPFS {doc[part]['ipfs']}", file=out)
    return 0


def _chain_id(rpc: str) -> int:
    from processors.market.client import rpc_call

    return int(rpc_call(rpc, "eth_chainId", []), 16)


def cmd_keys_create(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from gateway.market import new_api_key
    from processors.execution.genesis import JOB_MARKET, address_of
    from processors.market.chain import authorise_call
    from processors.market.client import send_call

    key = _key(args)
    account = address_of(key)
    if "0x" + account.hex() != args.account.lower():
        raise MarketUsageError(f"the key given is for 0x{account.hex()}, not {args.account}")
    rpc = _rpc(settings, args)
    delegate = os.urandom(32)
    send_call(rpc, _chain_id(rpc), key, JOB_MARKET, authorise_call(address_of(delegate)))
    print(new_api_key(delegate), file=out)
    return 0


def cmd_deposit(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    from processors.execution.genesis import JOB_MARKET
    from processors.market.chain import deposit_call
    from processors.market.client import send_call

    if args.amount <= 0:
        raise MarketUsageError("the amount must be positive")
    rpc = _rpc(settings, args)
    tx_hash, _ = send_call(
        rpc, _chain_id(rpc), _key(args), JOB_MARKET, deposit_call(), value=args.amount
    )
    print(f"deposited {args.amount} wei ({tx_hash})", file=out)
    return 0


def run(
    settings: Settings, args: argparse.Namespace, bootstrap_of: object, out: TextIO
) -> int | None:
    """Run a market command, or None when `args` is not one."""
    boot = bootstrap_of  # callable(settings) -> str
    try:
        if args.command == "worker":
            return cmd_worker(settings, args, boot)  # type: ignore[arg-type]
        if args.command == "matcher":
            return cmd_matcher(settings, args, boot(settings))  # type: ignore[operator]
        if args.command == "verifier":
            return cmd_verifier(settings, args, boot(settings))  # type: ignore[operator]
        if args.command == "model":
            return cmd_model_import(settings, args, out)
        if args.command == "keys":
            return cmd_keys_create(settings, args, out)
        if args.command == "deposit":
            return cmd_deposit(settings, args, out)
    except MarketUsageError as exc:
        print(f"lattice: error: {exc}", file=sys.stderr)
        return 2
    return None
