"""The market as this gateway knows it, and the jobs it starts for its users.

`MarketService` is a follower (`gateway.follow`) of the market's topics from the beginning:
the same `MarketView` fold the matcher uses (nodes, stakes, models), each job's lifecycle
(`processors.market.lifecycle.Job`, the fold the matcher and the verifier share) with its
streamed tokens, and the deposit holds; it wakes requests waiting for a job's news.

API keys: `lk_<64 hex>` is a secp256k1 private key the caller holds; its address must be an
authorised delegate of an account in `JobMarket` (`lattice keys create`). `JobService`
signs each job with it (the ledger checks the delegation again when settling) and admits a
job only while the account's deposit covers the maximum prices of its jobs still held:
a job holds its maximum price from its submission until a settlement of it has executed on
the ledger, or until `HOLD_GRACE_MS` past its deadline should the verifier never settle it.
The holds are folded from the log (`jobs.submitted`, `jobs.settled` and the settlement's
receipt, in any order), so every gateway holds the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cachetools import LRUCache
from eth_abi.abi import decode

from gateway.follow import Follower
from gateway.ledger import Call, LedgerQueries, QueryError
from gateway.limits import bearer
from gateway.market.pins import Pinner
from processors.abc import Output, Pace, Processor, RecordSink, Subscription
from processors.compute.generation import Sampling, SamplingError
from processors.compute.models import GENERATIVE, load_manifest, store_part
from processors.compute.runtime import BlockSource
from processors.execution.genesis import JOB_MARKET, address_of
from processors.market.chain import call_data
from processors.market.content import Blockstore, cid_of
from processors.market.ipfs import ipfs_home, mirror_into, peer_info
from processors.market.jobs import INFERENCE, TRAINING, JobRequest, is_oracle_job
from processors.market.lifecycle import Job
from processors.market.view import MarketView
from processors.state import MemoryStore
from schemas.events import JobSettled, JobSubmitted, JobTokens, ModelManifest, Receipt
from schemas.record import Event
from streams.kafka import LOW_LATENCY_READ, Record
from streams.metrics import JOB_QUEUE
from streams.settings import Settings
from streams.topics import hex_key, topic

log = logging.getLogger(__name__)

SUBMITTED = topic("jobs.submitted")
MODELS = topic("models")
FOLLOWED = (
    topic("gpu.nodes"),
    topic("gpu.heartbeats"),
    MODELS,
    SUBMITTED,
    topic("jobs.assigned"),
    topic("jobs.results"),
    topic("jobs.verdicts"),
    topic("jobs.settled"),
    topic("jobs.tokens"),
    topic("receipts"),  # nodes' stakes, from JobMarket's events
)
#: What requests wait for, and what their answers show of a job: fed the moment it is
#: durable (`streams.feed`), so in the order it became durable (a job's assignment before
#: its result), the other topics as fetched.
WAITED_ON = {
    topic(name).name for name in ("jobs.submitted", "jobs.assigned", "jobs.results", "jobs.tokens")
}
INLINE_LIMIT = 64 * 1024
KEY_PREFIX = "lk_"
#: How long after its deadline an unsettled job stops holding its deposit.
HOLD_GRACE_MS = 120_000
#: Jobs known only by records that came before their submission, kept at most.
MAX_EARLY_JOBS = 10_000
#: Settlement transactions seen executed before their `jobs.settled` record, and jobs
#: settled on the ledger, remembered at most.
MAX_EARLY_SETTLEMENTS = 10_000


class MarketError(Exception):
    """A route's error answer; `param` names the request parameter at fault, if one is."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def detail(self) -> dict[str, Any]:
        """OpenAI's error object (its clients read `type`, `code`, `message` and `param`)."""
        detail: dict[str, Any] = {"code": self.code, "message": self.message, "type": self.code}
        if self.param is not None:
            detail["param"] = self.param
        return detail


def new_api_key(private_key: bytes) -> str:
    return KEY_PREFIX + private_key.hex()


def key_of(api_key: str) -> bytes:
    raw = api_key.removeprefix(KEY_PREFIX)
    problem = MarketError(
        401, "invalid_api_key", "API keys look like lk_ followed by 64 hex digits"
    )
    if not api_key.startswith(KEY_PREFIX) or len(raw) != 64:
        raise problem
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise problem from None


@dataclass
class Hold:
    """What a job may still cost its requester's deposit: its maximum price, until
    `expires_ms` should the verifier never settle it."""

    account: bytes
    price_wei: int
    expires_ms: int


#: Marks a block fetch from another node's gateway (answered from the disk alone: no loops).
PEER_HEADER = "x-lattice-peer"


class MarketService(Processor[MemoryStore]):
    role = "gateway"
    dead_letters = False
    name = "lattice-gateway-market"
    pace = Pace(read_config=LOW_LATENCY_READ)

    def __init__(self, settings: Settings, bootstrap: str, chain_id: int) -> None:
        self.settings = settings
        self.view = MarketView(chain_id)
        #: Every submitted job (records that came before their job's submission wait in
        #: `_early`, the oldest dropped beyond `MAX_EARLY_JOBS`).
        self.jobs: dict[bytes, Job] = {}
        self.tokens: dict[bytes, list[JobTokens]] = {}
        self._early: LRUCache[bytes, Job] = LRUCache(MAX_EARLY_JOBS)
        #: Deposit holds by job, from the log and from this gateway's own admissions.
        self.holds: dict[bytes, Hold] = {}
        self._settling: dict[bytes, bytes] = {}  # settlement tx hash -> job id
        self._executed: LRUCache[bytes, None] = LRUCache(MAX_EARLY_SETTLEMENTS)
        self._released: LRUCache[bytes, None] = LRUCache(MAX_EARLY_SETTLEMENTS)
        self.lock = threading.Lock()
        self.waiters: dict[bytes, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        #: Every block stored is also written into the node's IPFS peer's repo, which
        #: serves it to the other nodes' peers.
        home = ipfs_home(settings)
        self.blockstore = Blockstore(Path(settings.data_dir) / "blockstore", mirror_into(home))
        #: The other nodes' gateways, asked for a block this one lacks. A fetch is marked
        #: as a peer's, so that a node without the block answers from its disk alone.
        peers = [p.strip() for p in settings.peers.split(",") if p.strip()]
        self.peers = BlockSource(self.blockstore, peers, {PEER_HEADER: "1"}, timeout_s=5.0)
        # Not for the public `/ipfs/{cid}`: a fetch of a CID nobody has leaves a wait inside
        # Kubo that cannot be cancelled, so strangers' requests do not reach the peer.
        pinning = BlockSource(self.blockstore, peers, {PEER_HEADER: "1"}, 5.0, ipfs_home=home)
        self.pinner = Pinner(home, self.blockstore, pinning)
        self._follower = Follower(self, bootstrap)
        #: Set when the gateway stops: requests waiting for a job are answered at once.
        self.stopping = threading.Event()

    def subscriptions(self) -> Sequence[Subscription]:
        return [Subscription(spec, fed=spec.name in WAITED_ON) for spec in FOLLOWED]

    def ipfs_peer(self) -> dict[str, Any] | None:
        """The node's IPFS peer's id and multiaddrs (None: it runs none)."""
        info = peer_info(self.pinner.home)
        if info is None:
            return None
        return {"peer_id": str(info["peer_id"]), "addrs": [str(a) for a in info["addrs"]]}

    def handle(self, record: Record[Any], state: MemoryStore) -> Sequence[Output]:
        self.apply(record.event)
        return ()

    def close(self) -> None:
        self._follower.close()

    def stop_waiting(self) -> None:
        """Wake every request waiting for a job (the gateway is stopping): each answers
        503 with its job's id, which the log keeps, rather than being cut by the server."""
        self.stopping.set()
        with self.lock:
            waiting, self.waiters = self.waiters, {}
        for wake in waiting.values():
            for loop, future in wake:
                loop.call_soon_threadsafe(_resolve, future)

    # -- folding ---------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        if isinstance(event, ModelManifest):
            self.pinner.offer(event.manifest_cid)
        with self.lock:
            self.view.apply(event)
            self._fold_holds(event)
            job_id = self._fold_job(event)
            wake = self.waiters.pop(job_id, []) if job_id is not None else []
        for loop, future in wake:
            loop.call_soon_threadsafe(_resolve, future)

    def _fold_job(self, event: Event) -> bytes | None:
        """Fold a job record; the job's id if it is one (waiters may have news)."""
        if isinstance(event, JobTokens):
            self.tokens.setdefault(event.job_id, []).append(event)
            return event.job_id
        job_id = getattr(event, "job_id", None)
        if not isinstance(job_id, bytes):
            return None
        if job_id in self.jobs:
            self.jobs[job_id] = self.jobs[job_id].apply(event)
        elif isinstance(event, JobSubmitted):
            self.jobs[job_id] = (self._early.pop(job_id, None) or Job(job_id)).apply(event)
        else:
            # The job topics are read side by side in no set order: an assignment can come
            # in before its submission. It is kept (within bounds) for when that arrives.
            self._early[job_id] = (self._early.get(job_id) or Job(job_id)).apply(event)
        return job_id

    def _fold_holds(self, event: Event) -> None:
        # The topics are read side by side: a settlement (or its receipt) can come in
        # before the job's submission, or its receipt before its record.
        if isinstance(event, JobSubmitted):
            job_id = event.job_id
            if is_oracle_job(event):
                return  # paid from the oracle's escrow, not from a deposit
            if job_id not in self.jobs and job_id not in self._released:
                expires = event.deadline_ms + HOLD_GRACE_MS
                self.holds[job_id] = Hold(event.requester, event.max_price_wei, expires)
        elif isinstance(event, JobSettled):
            tx = event.transaction_hash
            if tx in self._executed:
                self._release(event.job_id)
            else:
                self._settling[tx] = event.job_id
        elif isinstance(event, Receipt) and event.to_address == JOB_MARKET:
            settling = self._settling.pop(event.transaction_hash, None)
            if settling is not None:
                self._release(settling)
            else:
                self._executed[event.transaction_hash] = None

    def _release(self, job_id: bytes) -> None:
        self.holds.pop(job_id, None)
        self._released[job_id] = None

    # -- holds and waiting -----------------------------------------------------------------

    def in_flight(self, account: bytes, now_ms: int) -> int:
        """The deposit `account`'s unsettled jobs hold (expired holds are dropped)."""
        with self.lock:
            for job_id in [j for j, h in self.holds.items() if h.expires_ms <= now_ms]:
                del self.holds[job_id]
            return sum(h.price_wei for h in self.holds.values() if h.account == account)

    def hold(self, job_id: bytes, hold: Hold) -> None:
        with self.lock:
            self.holds[job_id] = hold

    def unhold(self, job_id: bytes) -> None:
        with self.lock:
            self.holds.pop(job_id, None)

    def submitted(self, job_id: bytes) -> Job | None:
        """The job, once its submission is known."""
        return self.jobs.get(job_id)

    async def wait(self, job_id: bytes, done: Callable[[Job], bool], timeout: float) -> Job | None:
        """The job once `done` says so, or as it is when `timeout` runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self.lock:
                job = self.submitted(job_id)
                if job is not None and done(job):
                    return job
                if self.stopping.is_set():
                    raise MarketError(
                        503,
                        "unavailable",
                        f"this gateway is stopping; job 0x{job_id.hex()} is on the log: "
                        f"follow it at /v1/jobs/0x{job_id.hex()}",
                    )
                future: asyncio.Future[None] = loop.create_future()
                self.waiters.setdefault(job_id, []).append((loop, future))
            remaining = deadline - loop.time()
            if remaining <= 0:
                return job
            try:
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                return self.submitted(job_id)

    def observe(self) -> None:
        """Job counts by state, for /metrics."""
        with self.lock:
            states = [job.state for job in self.jobs.values()]
        for state in ("submitted", "assigned", "completed", "verified", "settled", "expired"):
            JOB_QUEUE.labels(state).set(states.count(state))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(frozen=True)
class Training:
    """The training part of a job: a text dataset, epochs, batch size, SGD settings."""

    dataset: bytes
    epochs: int
    batch_size: int
    params: dict[str, str]


@dataclass(frozen=True)
class JobOrder:
    """What a user asks for: a model, its input, and how the job may run. `stream` asks
    the node for its tokens as they come; `redundant`, for two nodes; `tasks`, a model of
    one of these tasks (an endpoint's: each OpenAI one serves one kind of work)."""

    model: str
    payload: dict[str, Any]
    max_price: int | None = None
    timeout_ms: int | None = None
    training: Training | None = None
    redundant: bool = False
    stream: bool = False
    tasks: tuple[str, ...] = ()


class JobService:
    """Jobs this gateway starts for its users: who pays, whether they can, signing and
    logging the job, waiting for its result."""

    def __init__(
        self, settings: Settings, market: MarketService, ledger: LedgerQueries, sink: RecordSink
    ) -> None:
        self.settings = settings
        self.market = market
        self.ledger = ledger
        self.sink = sink
        self._nonce = itertools.count(int(time.time() * 1000) * 1000)
        #: Registered models' manifests by CID (a manifest never changes).
        self._manifests: LRUCache[str, dict[str, Any]] = LRUCache(256)

    def _read(self, signature: str, who: bytes) -> bytes:
        call = Call(to=JOB_MARKET, data=call_data(signature, "0x" + who.hex()))
        try:
            return self.ledger.call(call)
        except QueryError as exc:
            raise MarketError(503, "unavailable", f"cannot read JobMarket: {exc}") from None

    def deposit_of(self, account: bytes) -> int:
        return int(decode(["uint256"], self._read("deposits(address)", account))[0])

    def authorise(self, authorization: str) -> tuple[bytes, bytes]:
        """(delegate key, account) for a request's `Authorization: Bearer lk_...`."""
        api_key = bearer(authorization)
        if api_key is None:
            raise MarketError(401, "missing_api_key", "send Authorization: Bearer lk_...")
        key = key_of(api_key)
        raw = self._read("delegateOf(address)", address_of(key))
        account = bytes.fromhex(str(decode(["address"], raw)[0])[2:])
        if account == bytes(20):
            raise MarketError(
                401, "invalid_api_key", "this API key is not authorised by any account"
            )
        return key, account

    def _admit(self, account: bytes, price: int) -> None:
        in_flight = self.market.in_flight(account, int(time.time() * 1000))
        deposit = self.deposit_of(account)
        if deposit - in_flight < price:
            raise MarketError(
                402,
                "insufficient_deposit",
                f"deposit {deposit} wei, {in_flight} reserved by jobs in flight; "
                f"this job may cost {price}",
            )

    async def start(self, authorization: str, order: JobOrder) -> JobSubmitted:
        """Admit, sign and log a job; its record. It holds its maximum price on the deposit
        from now (before the log brings it back to this gateway's view) until a settlement
        of it has executed."""
        key, account = self.authorise(authorization)
        with self.market.lock:
            manifest = self.market.view.models.get(order.model)
        if manifest is None:
            raise MarketError(
                404, "model_not_found", f"no model named {order.model!r} is registered"
            )
        task = self.task_of(manifest.manifest_cid)
        if order.tasks and task is not None and task not in order.tasks:
            raise MarketError(
                400,
                "wrong_model_task",
                f"{order.model!r} is a {task} model; this endpoint needs a "
                f"{' or '.join(order.tasks)} model",
                param="model",
            )
        if order.training is None and task in GENERATIVE:
            try:  # what every worker would refuse, refused here with the parameter named
                Sampling.of(order.payload, b"")
            except SamplingError as exc:
                param = str(exc).split(":", 1)[0]
                raise MarketError(400, exc.code, str(exc), param=param) from None
        price = order.max_price or self.settings.job_max_price
        self._admit(account, price)
        data = json.dumps(order.payload, sort_keys=True).encode()
        if len(data) > INLINE_LIMIT:
            raise MarketError(413, "input_too_large", f"inputs are limited to {INLINE_LIMIT} bytes")
        self.market.blockstore.put(data)
        request = self._request(order, account, manifest.manifest_cid, data, price)
        request = dataclasses.replace(request, required_vram_bytes=manifest.vram_required_bytes)
        record = request.signed(key, self.settings.chain_id, data)
        self.market.hold(record.job_id, Hold(account, price, record.deadline_ms + HOLD_GRACE_MS))
        try:
            future = self.sink.send(SUBMITTED, record, key=hex_key(record.job_id))
            await asyncio.wait_for(asyncio.wrap_future(future), 15)
        except BaseException:
            self.market.unhold(record.job_id)
            raise
        return record

    def task_of(self, manifest_cid: str) -> str | None:
        """A registered model's task (None: its manifest is not in this blockstore)."""
        document = self.manifest_document(manifest_cid)
        return None if document is None else str(document.get("task"))

    def manifest_document(self, manifest_cid: str) -> dict[str, Any] | None:
        """A registered model's manifest (None: not in this blockstore)."""
        document = self._manifests.get(manifest_cid)
        if document is None:
            try:
                document = load_manifest(
                    self.market.blockstore.get(manifest_cid), manifest_cid
                ).document
            except (KeyError, ValueError):
                return None
            self._manifests[manifest_cid] = document
        return document

    def _request(
        self, order: JobOrder, account: bytes, manifest_cid: str, data: bytes, price: int
    ) -> JobRequest:
        now = int(time.time() * 1000)
        params = {"manifest_cid": manifest_cid}
        if order.redundant:
            params["redundancy"] = "2"
        if order.stream:
            params["stream"] = "1"
        training = order.training
        dataset_cid = None
        if training is not None:
            dataset_cid = str(store_part(self.market.blockstore, training.dataset)["cid"])
            params.update(training.params)
        return JobRequest(
            requester=account,
            kind=TRAINING if training is not None else INFERENCE,
            model_id=order.model,
            input_cid=cid_of(data),
            required_vram_bytes=0,
            max_price_wei=price,
            deadline_ms=now + (order.timeout_ms or self.settings.job_deadline_ms),
            nonce=next(self._nonce),
            submitted_at_ms=now,
            params=params,
            dataset_cid=dataset_cid,
            epochs=training.epochs if training is not None else None,
            batch_size=training.batch_size if training is not None else None,
        )

    async def submit(self, authorization: str, order: JobOrder) -> Job:
        """Start a job and wait for its first result; 504 when none came in time."""
        record = await self.start(authorization, order)
        timeout = (order.timeout_ms or self.settings.job_deadline_ms) / 1000 + 5
        job = await self.market.wait(
            record.job_id, lambda j: bool(j.results) or j.state == "expired", timeout
        )
        if job is None or not job.results:
            raise MarketError(
                504, "job_expired", f"no node answered job 0x{record.job_id.hex()} in time"
            )
        return job
