"""The market as its events describe it: nodes, their load and reputation, models (pure fold).

The matcher decides from this view and the gateway serves it (`/v1/nodes`, `/v1/models`):
one fold over `lattice.gpu.nodes`, `lattice.gpu.heartbeats`, `lattice.models`,
`lattice.jobs.results`, `lattice.jobs.verdicts` and `lattice.receipts`, so both read the
same truth. Records with a bad signature are ignored; an older registration or heartbeat
(by sequence) never replaces a newer one, and a heartbeat that comes in before its node's
registration counts once the registration does.

A node's stake is the ledger's, not what its registration says: `JobMarket`'s events in the
receipts (registered, slashed in a settlement, leaving, withdrawn). Receipts come from
several partitions in no set order, so each event is placed by its (block, transaction,
log) position and the stake is computed from the latest absolute figure and the slashes
after it: the same answer whatever order they arrive in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from processors.execution.genesis import JOB_MARKET
from processors.market.chain import NODE_REGISTERED, SETTLED, STAKE_WITHDRAWN, UNSTAKE_REQUESTED
from processors.market.economics import reputation_bps
from processors.market.jobs import InvalidSignature, node_record_hash, recover
from processors.market.matching import NodeView
from schemas.events import (
    GpuNodeHeartbeat,
    GpuNodeRegistration,
    JobVerdict,
    Log,
    ModelManifest,
    Receipt,
)
from schemas.record import Event

Position = tuple[int, int, int]  # block number, transaction index, log index
NOWHERE: Position = (-1, -1, -1)


@dataclass
class LedgerStake:
    """A node's stake as `JobMarket`'s events tell it (see the module docstring)."""

    figure: tuple[Position, int] = (NOWHERE, 0)  # the latest absolute stake and where
    slashes: dict[Position, int] = field(default_factory=dict)
    leaving: tuple[Position, bool] = (NOWHERE, False)

    @property
    def stake_wei(self) -> int:
        at, stake = self.figure
        return max(0, stake - sum(a for p, a in self.slashes.items() if p > at))

    def set(self, at: Position, stake: int, leaving: bool | None) -> None:
        if at > self.figure[0]:
            self.figure = (at, stake)
            # Slashes before the figure are in it already.
            self.slashes = {p: a for p, a in self.slashes.items() if p > at}
        if leaving is not None and at > self.leaving[0]:
            self.leaving = (at, leaving)


@dataclass
class NodeState:
    registration: GpuNodeRegistration
    heartbeat: GpuNodeHeartbeat | None = None
    ledger: LedgerStake | None = None
    accepted: int = 0
    rejected: int = 0

    def view(self) -> NodeView:
        reg, beat = self.registration, self.heartbeat
        devices = reg.devices
        vram = sum(d.vram_bytes for d in devices) or reg.ram_bytes
        used = sum(d.vram_used_bytes for d in beat.devices) if beat else 0
        ledger = self.ledger or LedgerStake()
        return NodeView(
            address=reg.node,
            price_wei_per_hour=reg.price_wei_per_hour,
            vram_bytes=vram,
            vram_used_bytes=used,
            reputation_bps=reputation_bps(self.accepted, self.rejected),
            jobs_in_flight=beat.jobs_in_flight if beat else 0,
            last_seen_ms=beat.timestamp_ms if beat else reg.registered_at_ms,
            runtimes=reg.runtimes,
            peak_gflops=sum(d.peak_fp16_gflops for d in devices),
            stake_wei=ledger.stake_wei,
            leaving=ledger.leaving[1],
        )


@dataclass
class MarketView:
    chain_id: int
    nodes: dict[bytes, NodeState] = field(default_factory=dict)
    models: dict[str, ModelManifest] = field(default_factory=dict)  # name -> latest manifest
    versions: dict[str, ModelManifest] = field(default_factory=dict)  # manifest CID -> it
    stakes: dict[bytes, LedgerStake] = field(default_factory=dict)  # by node, from receipts
    #: The latest heartbeat of every node, registered yet or not (the topics are read side
    #: by side: a heartbeat can come in before its node's registration).
    beats: dict[bytes, GpuNodeHeartbeat] = field(default_factory=dict)

    def _signed_by_node(self, domain: str, record: GpuNodeRegistration | GpuNodeHeartbeat) -> bool:
        try:
            signer = recover(node_record_hash(domain, record, self.chain_id), record.signature)
        except InvalidSignature:
            return False
        return bool(signer == record.node)

    def apply(self, event: Event) -> None:
        """Fold one record of the market's topics (others are ignored)."""
        if isinstance(event, GpuNodeRegistration):
            if not self._signed_by_node("node-registration", event):
                return
            node = self.nodes.get(event.node)
            if node is None:
                stake = self.stakes.setdefault(event.node, LedgerStake())
                beat = self.beats.get(event.node)
                self.nodes[event.node] = NodeState(event, heartbeat=beat, ledger=stake)
            elif event.sequence > node.registration.sequence:
                node.registration = event
        elif isinstance(event, GpuNodeHeartbeat):
            if not self._signed_by_node("node-heartbeat", event):
                return
            latest = self.beats.get(event.node)
            if latest is None or event.sequence > latest.sequence:
                self.beats[event.node] = event
                known = self.nodes.get(event.node)
                if known is not None:
                    known.heartbeat = event
        elif isinstance(event, ModelManifest):
            self.versions[event.manifest_cid] = event
            current = self.models.get(event.name)
            if current is None or event.version >= current.version:
                self.models[event.name] = event
        elif isinstance(event, Receipt):
            for log in event.logs:
                if log.address == JOB_MARKET and log.topics:
                    self._stake_event(event, log)
        elif isinstance(event, JobVerdict):
            node = self.nodes.get(event.node)
            if node is not None and event.outcome == "ACCEPTED":
                node.accepted += 1
            elif node is not None and event.outcome == "REJECTED":
                node.rejected += 1

    def _stake_event(self, receipt: Receipt, log: Log) -> None:
        at = (receipt.block_number, receipt.transaction_index, log.log_index)
        event, topics, data = log.topics[0], log.topics, log.data
        if event == SETTLED:
            slashed = int.from_bytes(data[96:128])  # paid, fee, refund, slashed
            if slashed:
                self._stake_of(topics[3]).slashes[at] = slashed
        elif event == NODE_REGISTERED:
            self._stake_of(topics[1]).set(at, int.from_bytes(data[:32]), leaving=False)
        elif event == UNSTAKE_REQUESTED:
            stake = self._stake_of(topics[1])
            stake.set(at, int.from_bytes(data[:32]), leaving=True)
        elif event == STAKE_WITHDRAWN:
            self._stake_of(topics[1]).set(at, 0, leaving=False)

    def _stake_of(self, topic: bytes) -> LedgerStake:
        node = topic[-20:]
        return self.stakes.setdefault(node, LedgerStake())

    def node_views(self) -> list[NodeView]:
        return [n.view() for _, n in sorted(self.nodes.items())]
