"""The one typed settings object, built once at start-up and passed down.

Sources, later ones winning: built-in defaults, a TOML file (`--config FILE`, or
`<data-dir>/lattice.toml` when present), environment variables `LATTICE_<FIELD>` (for
example `LATTICE_KAFKA=broker1:9092`), then command-line flags. Nothing deeper in the code
reads the environment.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The devnet's chain id (EIP-155). Fixed: wallets and signed transactions depend on it.
CHAIN_ID = 27182
#: geth's limit on a transaction's encoded size (4 slots of 32 KiB).
MAX_TX_BYTES = 128 * 1024
#: Block gas limit of the devnet.
BLOCK_GAS_LIMIT = 30_000_000


class SettingsError(ValueError):
    """A setting is unknown or its value has the wrong type."""


@dataclass(frozen=True)
class Settings:
    """Everything a Lattice process is configured with."""

    #: Where the devnet keeps its archive, stores and `devnet.json` (its endpoints).
    data_dir: Path = Path(".lattice")
    #: Bootstrap servers of an external Kafka cluster; None runs the embedded broker.
    kafka: str | None = None
    #: Port of the embedded broker; 0 picks a free loopback port.
    broker_port: int = 0
    #: Interface the gateway binds.
    host: str = "127.0.0.1"
    #: JSON-RPC / REST port.
    rpc_port: int = 8545
    #: WebSocket port.
    ws_port: int = 8546
    chain_id: int = CHAIN_ID
    max_tx_bytes: int = MAX_TX_BYTES
    block_gas_limit: int = BLOCK_GAS_LIMIT
    #: Replication factor of topics Lattice creates; 0: the cluster's broker count, up to 3
    #: (1 on the embedded broker). Topics replicated more than once also get
    #: `min.insync.replicas` 2, so that an acknowledgement (`acks=all`) means two copies.
    replication_factor: int = 0
    #: Prefix of Kafka client ids, so operators can tell processes apart.
    client_id: str = "lattice"
    #: Seconds to wait for an embedded broker to answer before giving up.
    broker_start_timeout: float = 30.0
    log_level: str = "info"
    #: Whether a node's JSON-RPC signs for the development mnemonic's ten accounts
    #: (`eth_accounts`, `eth_sendTransaction`, ...; public keys: development only). A
    #: devnet always does.
    dev_accounts: bool = False
    #: Block proposers the devnet runs, and how often each proposes (seconds).
    proposers: int = 2
    block_interval: float = 1.0
    #: GHOSTDAG's K, and the blue-score depth at which a chain block becomes final.
    ghostdag_k: int = 18
    finality_depth: int = 10
    #: Execution replicas the devnet runs (each signs checkpoints; a majority finalises).
    replicas: int = 1
    #: Blocks between a replica's signed checkpoints.
    checkpoint_every: int = 4
    #: Blocks between the state snapshots a replica keeps for nodes joining from one
    #: (`lattice node --snapshot URL`; 0: none).
    snapshot_every: int = 200
    #: A gateway to take a state snapshot from when this node has no state yet.
    snapshot: str | None = None
    #: Port of a processor's Prometheus `/metrics` (0: none; the devnet assigns them).
    metrics_port: int = 0
    #: Local GPU workers the devnet runs, and what `lattice worker` asks for its work.
    workers: int = 1
    worker_price: int = 3_600_000_000_000_000  # wei per hour of compute: 1e12 wei per ms
    worker_stake: int = 2 * 10**18
    worker_threads: int = 1
    #: Memory a worker's models and jobs may take on the device that runs them, and the
    #: most a model may declare at `lattice model import` (bytes; 0: three quarters of the
    #: machine's, or of its GPUs' memory). A job estimated over it, or that allocates past
    #: it, fails alone: the node answers it with a signed failure (docs/market.md).
    worker_memory_bytes: int = 0
    #: The same for the verifier's re-execution: a fixed figure, not the machine's, so that
    #: every replica skips the same re-executions and writes the same verdicts.
    verifier_memory_bytes: int = 8 << 30
    #: Share of results the verifier re-executes, and of jobs run twice (basis points).
    verify_bps: int = 10_000
    redundancy_bps: int = 1_000
    #: What a result forged under a node's own signature costs the node (wei; the ledger
    #: takes at most its stake): a fixed figure, not a share of a stake the node declares.
    slash_wei: int = 10**18
    #: How long a node holds an assignment before the job goes to another node.
    lease_ms: int = 15_000
    #: OpenAI-compatible jobs: time allowed and the most they may cost (wei).
    job_deadline_ms: int = 60_000
    job_max_price: int = 10**16
    #: Limits of a public gateway (`gateway.limits`, `gateway.guard`; 0 turns one off).
    #: The market and OpenAI-compatible routes, per API key (`Authorization: Bearer`; per
    #: client address without one): requests a second and the burst taken above that
    #: rate (a token bucket), and requests in flight at once. Beyond: 429 `Retry-After`.
    rate_limit: float = 50.0
    rate_burst: int = 100
    max_concurrent: int = 16
    #: Largest HTTP request body (JSON-RPC, REST, the market; beyond: 413) and WebSocket
    #: message (beyond: closed with 1009): geth's 5 MiB.
    max_body_bytes: int = 5 * 1024 * 1024
    #: Largest content block `POST /v1/content` takes, instead of `max_body_bytes`
    #: (models and checkpoints are uploaded as 1 MiB chunks).
    max_content_bytes: int = 4 * 1024 * 1024
    #: WebSocket: subscriptions one connection may hold, connections one client address
    #: may hold open.
    max_subscriptions: int = 100
    max_ws_connections: int = 100
    #: `eth_getLogs` and log filters: blocks one query may span and logs it may return
    #: (the figures geth-based providers document); beyond, error -32005.
    max_log_range: int = 10_000
    max_log_results: int = 10_000
    #: A node's name in the network (default: the host name), its roles beyond the
    #: gateway and execution replica every node runs (comma-separated: proposer, dag,
    #: market, publisher, analytics; see `lattice node --help`), and the addresses whose
    #: checkpoints count (comma-separated; a majority finalises; default: its own).
    node_name: str | None = None
    roles: str = ""
    signers: str = ""
    #: Other nodes' gateways (comma-separated URLs): a content block this gateway lacks
    #: (a model, a job's input, a worker's output stored through another node) is
    #: fetched from them, verified against its CID and kept.
    peers: str = ""
    #: The key (0x-hex, in a file) of a node's local worker (`roles` with `worker`): the
    #: worker's address registers, stakes and is paid, so it must hold funds.
    worker_key_file: Path | None = None
    #: A genesis file replacing the development genesis (see processors/execution/genesis.py).
    genesis_file: Path | None = None
    #: Extra librdkafka settings for every client (security, tuning), from the file only.
    kafka_config: Mapping[str, str] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return self.kafka is None

    @classmethod
    def load(
        cls,
        *,
        config_file: Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Build settings from file, environment and flags (flags win; None means unset)."""
        values: dict[str, Any] = {}
        flags = {k: v for k, v in (overrides or {}).items() if v is not None}
        data_dir = Path(flags.get("data_dir", (env or {}).get("LATTICE_DATA_DIR", ".lattice")))
        if config_file is None and (data_dir / "lattice.toml").is_file():
            config_file = data_dir / "lattice.toml"
        if config_file is not None:
            try:
                values.update(tomllib.loads(Path(config_file).read_text()))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(f"cannot read settings file {config_file}: {exc}") from exc
        for key, raw in (env or {}).items():
            if key.startswith("LATTICE_"):
                name = key.removeprefix("LATTICE_").lower()
                if name in _FIELDS and name != "kafka_config":
                    values[name] = raw
        values.update(flags)
        return cls(**{k: _coerce(k, v) for k, v in values.items()})

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _boolean(value: Any) -> bool:
    """A boolean from TOML, or from an environment variable's text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise TypeError(f"expected true or false, got {value!r}")


def _coerce(name: str, value: Any) -> Any:
    if name not in _FIELDS:
        raise SettingsError(f"unknown setting {name!r}")
    kind = _FIELDS[name].type
    try:
        if kind in ("Path", "Path | None"):
            return Path(value) if value else None if kind == "Path | None" else Path(value)
        if kind == "bool":
            return _boolean(value)
        if kind == "int":
            if isinstance(value, bool):
                raise TypeError("boolean")
            return int(value)
        if kind == "float":
            return float(value)
        if kind in ("str", "str | None"):
            if not isinstance(value, str):
                raise TypeError(type(value).__name__)
            return (value or None) if kind == "str | None" else value
        if kind == "Mapping[str, str]":
            if not isinstance(value, Mapping):
                raise TypeError(type(value).__name__)
            return {str(k): str(v) for k, v in value.items()}
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name!r}: bad value {value!r} ({exc})") from exc
    raise SettingsError(f"setting {name!r}: unsupported type {kind}")
