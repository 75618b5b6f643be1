"""Prometheus metrics: one registry per process, served at `/metrics`.

Every Lattice process exposes what it does: the gateway on its own port (`GET /metrics`),
each processor on `--metrics-port` / `LATTICE_METRICS_PORT` (the devnet gives each child
one and lists them in `devnet.json`). Names start with `lattice_`.

Consumer lag comes from librdkafka's statistics (every consumer this package makes reports
them every 5 s): per client, topic and partition, the high watermark minus the consumer's
next offset. On the embedded broker the high watermark can trail the true end by up to one
batch (see `streams.kafka`), so lag there reads low by at most a batch.
"""

from __future__ import annotations

import json
import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

CONSUMER_LAG = Gauge(
    "lattice_consumer_lag_records",
    "Records between a consumer's position and the end of the partition.",
    ["client", "topic", "partition"],
)
EVENTS = Counter(
    "lattice_events_total",
    "Events a process consumed or produced.",
    ["process", "topic", "direction"],
)
BLOCK_ORDERING_SECONDS = Histogram(
    "lattice_block_ordering_seconds",
    "From a DAG block's timestamp to its chain block's emission as final and ordered.",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60),
)
BLOCK_EXECUTION_SECONDS = Histogram(
    "lattice_block_execution_seconds",
    "Time to execute one EVM block and commit it.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVM_TRANSACTIONS = Counter(
    "lattice_evm_transactions_total", "Transactions executed, by outcome.", ["outcome"]
)
MODEL_MEMORY = Gauge(
    "lattice_worker_model_bytes",
    "A loaded model's memory: the manifest's estimate, and what loading it took here "
    "(resident memory, or device memory on a GPU).",
    ["model", "kind"],
)
MEMPOOL_SIZE = Gauge("lattice_mempool_transactions", "Transactions in a proposer's mempool.")
JOB_QUEUE = Gauge("lattice_job_queue_depth", "Jobs waiting for a node or for an answer.", ["state"])
VERIFICATIONS = Counter("lattice_verifications_total", "Verdicts, by outcome.", ["outcome"])
REPLICA_DIVERGENCES = Gauge(
    "lattice_replica_divergences", "Heights at which execution replicas signed different roots."
)
IPFS_REQUESTS = Counter(
    "lattice_ipfs_requests_total",
    "Requests to a node's IPFS peer, by what was asked (fetch, pin, connect) and outcome.",
    ["request", "outcome"],
)
IPFS_PEERS = Gauge("lattice_ipfs_peers", "Peers the node's IPFS peer is connected to.")
STATS_INTERVAL_MS = 5_000


def record_statistics(stats_json: str) -> None:
    """librdkafka `stats_cb`: update the lag gauges from a statistics document."""
    try:
        stats = json.loads(stats_json)
    except ValueError:
        return
    client = str(stats.get("client_id", ""))
    for topic_name, topic in stats.get("topics", {}).items():
        for partition, info in topic.get("partitions", {}).items():
            # librdkafka's own consumer_lag needs committed offsets; processors that own
            # their offsets have none, so: end of partition minus the next offset to read.
            position, end = info.get("app_offset", -1), info.get("hi_offset", -1)
            if partition != "-1" and position >= 0 and end >= 0:
                CONSUMER_LAG.labels(client, topic_name, partition).set(max(0, end - position))


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve this process's metrics over HTTP (nothing when `port` is 0)."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)
