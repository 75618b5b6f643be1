"""The topic catalogue: every Lattice topic declared once, with its key, partitioning,
cleanup policy and value schema. `lattice` creates missing topics from it at start-up.

Keys are UTF-8 text: addresses and hashes as lower-case 0x-hex, heights in decimal, so that
compaction and any Kafka tool see the same key the design names. Topics marked one
partition are totally ordered by design (the DAG order, the EVM chain).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    #: Full name of the Avro record every value on the topic is written with.
    schema: str
    #: What the key is (documentation; the producer passes it).
    key: str
    partitions: int
    compacted: bool = False
    #: Retention for delete-policy topics; None keeps records forever (the log is the truth).
    retention_ms: int | None = None
    doc: str = ""

    @property
    def cleanup_policy(self) -> str:
        return "compact" if self.compacted else "delete"

    def config(self) -> dict[str, str]:
        config = {"cleanup.policy": self.cleanup_policy}
        config["retention.ms"] = str(self.retention_ms if self.retention_ms is not None else -1)
        return config


def _t(name: str, schema: str, key: str, partitions: int, doc: str, **kw: object) -> TopicSpec:
    return TopicSpec(f"lattice.{name}", f"lattice.{schema}", key, partitions, doc=doc, **kw)  # type: ignore[arg-type]


HOUR_MS = 3_600_000

TOPICS: tuple[TopicSpec, ...] = (
    _t(
        "tx.submitted",
        "tx.TransactionSubmitted",
        "sender",
        4,
        "Signed raw transactions as received.",
    ),
    _t(
        "tx.rejected",
        "tx.TransactionRejected",
        "tx hash",
        2,
        "Ordered transactions execution skipped, with the reason.",
    ),
    # One partition: finality is decided on the blocks seen so far, so every DAG processor
    # must see blocks in the same order for its output to be identical.
    _t(
        "blocks.proposed",
        "blocks.BlockProposed",
        "proposer",
        1,
        "Signed DAG blocks from the proposers, in one total order.",
    ),
    _t(
        "blocks.ordered",
        "blocks.BlockOrdered",
        "-",
        1,
        "GHOSTDAG consensus order of final chain blocks.",
    ),
    _t(
        "blocks.virtual",
        "blocks.VirtualChainChanged",
        "-",
        1,
        "Changes of the virtual selected chain, which the optimistic head executes.",
    ),
    _t(
        "blocks.executed",
        "blocks.BlockExecuted",
        "-",
        1,
        "EVM blocks, one per ordered chain block.",
    ),
    _t("receipts", "receipts.Receipt", "tx hash", 4, "Receipts and logs."),
    _t(
        "state.accounts",
        "state.AccountState",
        "address",
        4,
        "Latest state per account.",
        compacted=True,
    ),
    _t("checkpoints", "state.Checkpoint", "height", 1, "Replicas' signed state roots."),
    _t(
        "gpu.nodes",
        "gpu.GpuNodeRegistration",
        "node address",
        2,
        "Compute node registrations, specs and prices.",
        compacted=True,
    ),
    _t(
        "gpu.heartbeats",
        "gpu.GpuNodeHeartbeat",
        "node address",
        2,
        "Compute node liveness and load.",
        retention_ms=24 * HOUR_MS,
    ),
    _t("jobs.submitted", "jobs.JobSubmitted", "job id", 4, "Signed compute requests."),
    _t("jobs.assigned", "jobs.JobAssigned", "job id", 4, "Matcher decisions with reasons."),
    _t("jobs.results", "jobs.JobResult", "job id", 4, "Signed job results."),
    _t("jobs.proofs", "jobs.JobProof", "job id", 4, "Proofs of compute."),
    _t(
        "jobs.tokens",
        "jobs.JobTokens",
        "job id",
        4,
        "Tokens of streamed generations as they are produced (progress only).",
        retention_ms=HOUR_MS,
    ),
    _t("jobs.verdicts", "jobs.JobVerdict", "job id", 4, "Verification verdicts."),
    _t("jobs.settled", "jobs.JobSettled", "job id", 4, "Settlement transactions."),
    _t("models", "models.ModelManifest", "model id", 1, "Model manifests.", compacted=True),
    # Keyed by the processor, so that one processor's dead letters stay in the order it
    # skipped them; one partition: a processor looks its earlier ones up from the start.
    _t(
        "deadletters",
        "deadletters.DeadLetter",
        "processor",
        1,
        "Input records processors skipped as not of their topic's schema, with the reason.",
    ),
    _t(
        "network",
        "network.NetworkGenesis",
        "genesis",
        1,
        "The network's chain id and genesis, as the first node wrote them.",
        compacted=True,
    ),
)

BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}
#: Where the processor runtime reports the inputs it skipped (`processors.runtime`).
DEADLETTERS = BY_NAME["lattice.deadletters"]


def topic(name: str) -> TopicSpec:
    """The spec of a catalogue topic; accepts the short form without `lattice.`."""
    spec = BY_NAME.get(name) or BY_NAME.get(f"lattice.{name}")
    if spec is None:
        known = ", ".join(sorted(BY_NAME))
        raise KeyError(f"unknown topic {name!r}; known topics: {known}")
    return spec


def hex_key(value: bytes) -> str:
    """The text key for an address or hash."""
    return "0x" + value.hex()


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash, as the Java client's default partitioner computes it."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = data[length - length % 4 :]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def partition_of(key: str, partitions: int) -> int:
    """The partition our producers (and the Java client, and Faust) put a keyed record in."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
