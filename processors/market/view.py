"""The market as its events describe it: nodes, their load and reputation, models (pure fold).

The matcher decides from this view and the gateway serves it (`/v1/nodes`, `/v1/models`):
one fold over `lattice.gpu.nodes`, `lattice.gpu.heartbeats`, `lattice.models`,
`lattice.jobs.results` and `lattice.jobs.verdicts`, so both read the same truth. Records
with a bad signature are ignored; an older registration or heartbeat (by sequence) never
replaces a newer one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from processors.market.economics import reputation_bps
from processors.market.jobs import InvalidSignature, node_record_hash, recover
from processors.market.matching import NodeView


@dataclass
class NodeState:
    registration: dict[str, Any]
    heartbeat: dict[str, Any] | None = None
    accepted: int = 0
    rejected: int = 0

    def view(self) -> NodeView:
        reg, beat = self.registration, self.heartbeat
        devices = reg["devices"]
        vram = sum(d["vram_bytes"] for d in devices) or reg["ram_bytes"]
        used = sum(d["vram_used_bytes"] for d in beat["devices"]) if beat else 0
        return NodeView(
            address=reg["node"],
            price_wei_per_hour=reg["price_wei_per_hour"],
            vram_bytes=vram,
            vram_used_bytes=used,
            reputation_bps=reputation_bps(self.accepted, self.rejected),
            jobs_in_flight=beat["jobs_in_flight"] if beat else 0,
            last_seen_ms=beat["timestamp_ms"] if beat else reg["registered_at_ms"],
            runtimes=tuple(reg["runtimes"]),
            peak_gflops=sum(d["peak_fp16_gflops"] for d in devices),
            stake_wei=reg["stake_wei"],
        )


@dataclass
class MarketView:
    chain_id: int
    nodes: dict[bytes, NodeState] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> latest manifest
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)  # manifest CID -> it

    def _signed_by_node(self, domain: str, record: Mapping[str, Any]) -> bool:
        try:
            signer = recover(node_record_hash(domain, record, self.chain_id), record["signature"])
        except InvalidSignature:
            return False
        return bool(signer == record["node"])

    def apply(self, schema: str, record: dict[str, Any]) -> None:
        if schema == "lattice.gpu.GpuNodeRegistration":
            if not self._signed_by_node("node-registration", record):
                return
            node = self.nodes.get(record["node"])
            if node is None:
                self.nodes[record["node"]] = NodeState(record)
            elif record["sequence"] > node.registration["sequence"]:
                node.registration = record
        elif schema == "lattice.gpu.GpuNodeHeartbeat":
            node = self.nodes.get(record["node"])
            if node is None or not self._signed_by_node("node-heartbeat", record):
                return
            if node.heartbeat is None or record["sequence"] > node.heartbeat["sequence"]:
                node.heartbeat = record
        elif schema == "lattice.models.ModelManifest":
            self.versions[record["manifest_cid"]] = record
            current = self.models.get(record["name"])
            if current is None or record["version"] >= current["version"]:
                self.models[record["name"]] = record
        elif schema == "lattice.jobs.JobVerdict":
            node = self.nodes.get(record["node"])
            if node is not None and record["outcome"] == "ACCEPTED":
                node.accepted += 1
            elif node is not None and record["outcome"] == "REJECTED":
                node.rejected += 1

    def node_views(self) -> list[NodeView]:
        return [n.view() for _, n in sorted(self.nodes.items())]
