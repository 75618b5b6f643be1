"""The one processor runtime: poll, decode, handle, commit, send (see `processors.abc`).

Processors own their offsets: inputs are read by explicit assignment from the positions
their store holds, not from consumer-group commits, so a broker that forgot its groups (the
embedded one, after a restart) changes nothing. Only subscriptions that share partitions
among members (`Subscription.group`) take their partitions and positions from a group, and
the runtime commits those back after each store commit.

Outputs leave through the store's outbox: committed with the state and the input offsets,
then sent, each record carrying three headers, `lattice-origin` (the processor's name),
`lattice-seq` (the store's identity and the entry's outbox sequence) and, for outputs of
an input, `lattice-cause` (the input's topic, partition, offset and the output's index
among that input's outputs). On
start, the outbox entries not acknowledged before are looked for on the log from the last
acknowledged offset of their partition on, and only those missing are sent. With
`Pace.rebuild_window`, the last records of each output partition are read at start too:
outputs whose cause the log already shows are not sent again (a store rebuilt from the log).

An input that is not a record of its topic's schema (random bytes, a truncated record,
another schema's) is skipped like a handled one, its offset committed with the state, and
it becomes a `DeadLetter` on `lattice.deadletters`, an output like any other (outbox,
headers, cause). Whether bytes decode depends on the bytes alone (`schemas.codec`), so
every replica skips the same records and their states stay alike. Exceptions of the
processor's own `handle` are not caught: on a record that decodes they are bugs, and
skipping them would hide the bug and could part replicas that fail differently. Before
its first dead letter of a run, the runtime reads the dead-letter topic for those it sent
before (a store rebuilt from the log skips its inputs again), and sends none twice.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Generic, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from processors.abc import Outgoing, Output, Partition, Processor, S, Subscription
from processors.standby import Election, LostLead, OnLog
from schemas.codec import DecodeError, default_codec
from schemas.events import DeadLetter, Position
from streams.broker import SUPERVISOR_ENV
from streams.durable import BrokerRestarted, Gate
from streams.feed import FED_READ, FedMessage, FeedClient, devnet_feed
from streams.kafka import (
    CatchUp,
    Delivered,
    DeliveryError,
    Producer,
    Reader,
    Record,
    client_config,
    record_of,
)
from streams.metrics import EVENTS
from streams.metrics import serve as serve_metrics
from streams.topics import DEADLETTERS, partition_of

log = logging.getLogger(__name__)

ORIGIN = "lattice-origin"
SEQUENCE = "lattice-seq"
CAUSE = "lattice-cause"
#: Acknowledgements are written with the next state commit, or on their own this often.
ACK_COMMIT_S = 1.0
#: With the durable feed, how long a poll waits on it before looking at the fetched
#: records (those the feed does not bring wait at most this much longer than before).
FEED_WAIT_S = 0.02
#: A dead letter keeps this much of the skipped value (a record may be up to the broker's
#: message size, and its dead letter must fit too) and of the reason.
DEAD_VALUE_BYTES = 65_536
DEAD_REASON_CHARS = 1000


#: How long a supervised process whose supervisor died goes on stopping before it exits at
#: once. Its devnet took the broker and the archive with it, so what its shutdown waits for
#: (sends and inputs to become durable) never comes, and its store holds what a restart
#: needs: waiting out its timeouts (30-60 s) only left it running behind a test run.
ORPHAN_EXIT_S = 3.0


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for a process's main loop to watch. A process
    whose supervisor has died (its parent is no longer the supervisor that started it:
    the kernel's parent-death signal) is ended by SIGALRM `ORPHAN_EXIT_S` later however
    its shutdown goes (an alarm, not a thread: a handler must not start one)."""
    stop = threading.Event()
    # Read once, and not passed on: a grandchild's parent is not this supervisor.
    supervisor = os.environ.pop(SUPERVISOR_ENV, "")
    supervisor_pid = int(supervisor) if supervisor.isdigit() else 0

    def handler(signum: int, frame: Any) -> None:
        stop.set()
        if supervisor_pid and os.getppid() != supervisor_pid:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.setitimer(signal.ITIMER_REAL, ORPHAN_EXIT_S)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def configure_logging(level: str, metrics_port: int = 0) -> None:
    """Log format and level for a process; and its `/metrics` when given a port."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    serve_metrics(metrics_port)


def headers_of(message: Any) -> dict[str, bytes]:
    return {name: value or b"" for name, value in message.headers() or ()}


def _cause_header(cause: tuple[str, int, int, int]) -> bytes:
    return "{}:{}:{}:{}".format(*cause).encode()


def parse_cause(value: bytes) -> tuple[str, int, int, int]:
    topic, partition, offset, index = value.decode().rsplit(":", 3)
    return topic, int(partition), int(offset), int(index)


class _Sent:
    """Outbox entries in flight and their acknowledgements (filled by the producer's
    delivery thread, taken by the loop)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acknowledged: dict[int, Delivered] = {}
        self.failures: list[str] = []
        self.in_flight = 0

    def watch(self, sequence: int, future: Future[Delivered]) -> None:
        with self.lock:
            self.in_flight += 1

        def done(result: Future[Delivered]) -> None:
            with self.lock:
                self.in_flight -= 1
                error = result.exception()
                if error is not None:
                    self.failures.append(str(error))
                else:
                    self.acknowledged[sequence] = result.result()

        future.add_done_callback(done)

    def take(self) -> dict[int, Delivered]:
        with self.lock:
            if self.failures:
                raise DeliveryError("; ".join(self.failures))
            taken, self.acknowledged = self.acknowledged, {}
            return taken


class Runtime(Generic[S]):
    """Runs one processor over its store until stopped.

    `open` restores the processor, settles the outbox and positions the reader; `run`
    loops; `close` commits what is pending, waits for the outbox to be acknowledged and
    releases the clients. `run` opens first when `open` was not called.
    """

    def __init__(
        self,
        processor: Processor[S],
        store: S,
        bootstrap: str,
        *,
        producer: Producer | None = None,
        kafka_config: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        active_group: str | None = None,
        gate: Gate | Literal["env"] | None = "env",
    ) -> None:
        """`active_group`: run as one member of a hot-standby set under one name, sending
        outputs only while this consumer group makes it the active one
        (`processors.standby`). A processor with ticks is led, not followed: its members
        fold the whole log, and only the active one ticks (`Processor.tick`).

        `gate`: where records are handled, and outputs count as sent, only once they are
        durable (`streams.durable`; by default the devnet's, under a devnet). A view that
        stores nothing may pass None and see records sooner."""
        self.processor = processor
        self._gate = Gate.from_env() if gate == "env" else gate
        if not processor.pace.durable_inputs:
            self._gate = None
        self.store = store
        self.bootstrap = bootstrap
        self.clock = clock
        self.name = processor.name
        self.pace = processor.pace
        self._config = kafka_config
        self._own_producer = producer is None
        self._producer = producer
        self.reader = Reader(bootstrap, client_id=self.name, config=self._read_config())
        self.codec = default_codec()
        self._group: Consumer | None = None
        self._group_backlog: list[Any] = []
        #: The group partitions this member holds: the last offset handled, and the offset
        #: last committed to the group.
        self._group_handled: dict[Partition, int] = {}
        self._group_committed: dict[Partition, int] = {}
        self._group_topics: set[str] = set()
        self._catch_up: CatchUp | None = None
        self._sent = _Sent()
        self._partitions: dict[str, int] = {}
        self._sequence = 0
        self._positions: dict[Partition, int] = {}
        self._outgoing: list[Outgoing] = []
        self._acknowledged: dict[int, Delivered] = {}
        self._handled = 0
        self._first_pending = 0.0
        self._last_commit = time.monotonic()
        self._next_tick = 0.0
        self._on_log = OnLog()
        #: Standby (`active_group`): the election, the output partitions followed (next
        #: offset), the committed entries held back, and the ends a takeover waits for.
        self._election: Election | None = None
        self.active = active_group is None
        self._active_group = active_group
        self._followed: dict[Partition, int] = {}
        self._held: dict[int, Outgoing] = {}
        self._last_output: dict[Partition, int] = {}
        self._takeover: dict[Partition, int] | None = None
        #: A ticking processor's standby set: only the elected member ticks (`_lead`).
        self._led = active_group is not None and self.pace.tick_s is not None
        self._start: dict[Partition, int] = {}
        self._handled_to: dict[Partition, int] = {}
        self.opened = False
        self.closed = False
        #: `handle` or `tick` raised: commit nothing on the way out (a half-made state, and
        #: an offset past a record that the restarted process must meet again).
        self._broken = False
        self.live = False
        self.skipped = 0  # inputs skipped as undecodable
        self.fed = 0  # inputs handled as the durable feed brought them
        self._dead_letters_found: bool | None = None  # see `_find_dead_letters`
        self._schemas: dict[str, str] = {}
        #: The feed once live (`streams.feed`); each fed partition's next offset (`_in_order`).
        self._feed: FeedClient | None = None
        self._fed_topics: set[str] = set()
        self._next: dict[Partition, int] = {}

    def _read_config(self) -> dict[str, Any]:
        """The reader's librdkafka settings: the node's, the pace's, and under a devnet's
        durable feed a seldom fetch for a processor it feeds (the fetch is its backstop)."""
        fed = any(s.fed for s in self.processor.subscriptions()) and devnet_feed() is not None
        fetch = FED_READ if fed else {}
        return {**(self._config or {}), **(self.pace.read_config or {}), **fetch}

    @property
    def producer(self) -> Producer:
        """The producer outputs go through (made when first needed: a view sends nothing)."""
        if self._producer is None:
            self._producer = Producer(
                self.bootstrap, client_id=f"{self.name}-out", config=self._config, gate=self._gate
            )
        return self._producer

    # -- start -----------------------------------------------------------------------------

    def open(self) -> None:
        """Restore, settle the outbox, find the start positions and assign the reader."""
        self.processor.restore(self.store)
        self.store.commit({}, (), {})  # what restoring wrote (a fresh ledger's genesis)
        self._sequence = self.store.next_sequence()
        self._identity = self.store.identity()
        if self._active_group is not None:
            self._check_standby()
        self._resend_outbox()
        if self.pace.rebuild_window > 0:
            self._find_own_outputs()
        if self._held:
            self._release_held()
        self._schemas = {s.topic.name: s.topic.schema for s in self.processor.subscriptions()}
        assigned = [s for s in self.processor.subscriptions() if s.group is None]
        start = self._start_positions(assigned)
        stored = self.store.positions()
        # Where reading from a partition's end began is written down at once: a crash
        # before the first commit resumes there, not at a later end.
        from_end = {s.topic.name for s in assigned if s.start == "end"}
        fresh = {
            key: offset - 1
            for key, offset in start.items()
            if key not in stored and key[0] in from_end
        }
        if fresh:
            self.store.commit(fresh, (), {})
        self._start = start
        self._fed_topics = {s.topic.name for s in assigned if s.fed}
        self._next = {key: offset for key, offset in start.items() if key[0] in self._fed_topics}
        self._catch_up = CatchUp(self.reader, start, spans=self._spans)
        self.reader.assign({**start, **self._followed})
        if self._active_group is not None:
            first = self.processor.subscriptions()[0].topic.name
            self._election = Election(self.bootstrap, self._active_group, first, self._config)
        groups = [s for s in self.processor.subscriptions() if s.group is not None]
        if groups:
            self._join_group(groups)
        self.opened = True
        if self._catch_up.done:
            self._go_live()

    def _start_positions(self, subscriptions: Sequence[Subscription]) -> dict[Partition, int]:
        topics = sorted({s.topic.name for s in subscriptions})
        self._spans = self.reader.end_offsets_of(topics) if topics else {}
        stored = self.store.positions()
        start: dict[Partition, int] = {}
        for subscription in subscriptions:
            name = subscription.topic.name
            every = sorted(p for t, p in self._spans if t == name)
            partitions = subscription.partitions or every
            if subscription.key is not None:
                partitions = (partition_of(subscription.key, len(every)),)
            for partition in partitions:
                key = (name, partition)
                low, end = self._spans[key]
                if key in stored:
                    start[key] = max(low, stored[key] + 1)
                else:
                    start[key] = low if subscription.start == "beginning" else end
        return start

    def _join_group(self, subscriptions: Sequence[Subscription]) -> None:
        group = subscriptions[0].group
        if any(s.group != group for s in subscriptions):
            raise ValueError(f"{self.name}: one consumer group per processor")
        reset = "earliest" if subscriptions[0].start == "beginning" else "latest"
        self._group = Consumer(
            client_config(
                self.bootstrap,
                {
                    "group.id": group,
                    "client.id": f"{self.name}-group",
                    "auto.offset.reset": reset,
                    "enable.auto.commit": False,
                    "session.timeout.ms": 10_000,
                    "heartbeat.interval.ms": 1_000,
                },
                self._config,
            )
        )
        self._group_topics = {s.topic.name for s in subscriptions}
        self._group.subscribe(list(self._group_topics), on_revoke=self._revoked)

    def _revoked(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Partitions go to another member: commit how far they may resume, then forget
        them (a later commit here must not move the new owner's position)."""
        self._commit_group(wait=True)
        for tp in partitions:
            self._group_handled.pop((tp.topic, tp.partition), None)
            self._group_committed.pop((tp.topic, tp.partition), None)

    def _go_live(self) -> None:
        self.live = True
        log.info("%s caught up", self.name)
        if self._fed_topics:
            self._feed = FeedClient.from_env(self._fed_topics)

    # -- the outbox after a restart --------------------------------------------------------

    def _resend_outbox(self) -> None:
        pending = self.store.outbox()
        if not pending:
            return
        landed = self._landed(pending)
        resend = [entry for entry in pending if entry.sequence not in landed]
        log.info(
            "%s: %d outbox entries from before the restart, %d already on the log",
            self.name,
            len(pending),
            len(pending) - len(resend),
        )
        self._acknowledged.update(landed)
        for entry in resend:
            self._send_or_hold(entry)

    def _landed(self, pending: Sequence[Outgoing]) -> dict[int, Delivered]:
        """Which pending entries the log holds: read from the last acknowledged offset of
        each of their partitions to its end."""
        wanted = {entry.sequence for entry in pending}
        partitions = sorted({(entry.topic, entry.partition) for entry in pending})
        delivered = self.store.delivered()
        spans = self.reader.end_offsets_of(sorted({t for t, _ in partitions}))
        starts = {
            key: max(spans[key][0], delivered.get(key, -1) + 1)
            for key in partitions
            if key in spans
        }
        found: dict[int, Delivered] = {}
        if not starts:
            return found
        until = {key: spans[key][1] for key in starts}
        for message in self.reader.read(starts, until=until):
            headers = headers_of(message)
            if headers.get(ORIGIN) != self.name.encode():
                continue
            sequence = self._own_sequence(headers.get(SEQUENCE, b""))
            if sequence in wanted:
                found[sequence] = Delivered(message.topic(), message.partition(), message.offset())
        return found

    def _own_sequence(self, header: bytes) -> int | None:
        """The outbox sequence a `lattice-seq` header names, if it is this store's."""
        identity, _, sequence = header.decode(errors="replace").partition(":")
        return int(sequence) if identity == self._identity and sequence.isdigit() else None

    def _find_own_outputs(self) -> None:
        """What the last `rebuild_window` records of each output partition say this
        processor already sent, by cause; a standby follows the partitions from there."""
        topics = sorted({spec.name for spec in self.processor.outputs()})
        if not topics:
            return
        spans = self.reader.end_offsets_of(topics)
        if self._active_group is not None:
            self._followed = {key: end for key, (_, end) in spans.items()}
        starts = {
            key: max(low, end - self.pace.rebuild_window)
            for key, (low, end) in spans.items()
            if end > low
        }
        if not starts:
            return
        for message in self.reader.read(starts, until={k: spans[k][1] for k in starts}):
            self._note_output(message)
        if self._on_log:
            log.info("%s: outputs already on the log up to %s", self.name, self._on_log.highs())

    def _note_output(self, message: Any) -> Delivered | None:
        """Note an output record under this name; where it is, if it is one."""
        headers = headers_of(message)
        if headers.get(ORIGIN) != self.name.encode() or CAUSE not in headers:
            return None
        where = Delivered(message.topic(), message.partition(), message.offset())
        self._on_log.saw(parse_cause(headers[CAUSE]), (where.topic, where.partition))
        key = (where.topic, where.partition)
        self._last_output[key] = max(self._last_output.get(key, -1), where.offset)
        return where

    def _already_sent(self, cause: tuple[str, int, int, int], output: Partition) -> bool:
        return self._on_log.holds(cause, output)

    # -- standby ---------------------------------------------------------------------------

    def _check_standby(self) -> None:
        if self._led:
            return
        if self.pace.rebuild_window <= 0:
            raise ValueError(
                f"{self.name}: a standby member of a processor without ticks needs a "
                "rebuild window to find its outputs on the log"
            )
        outputs = {spec.name for spec in self.processor.outputs()}
        if outputs & {s.topic.name for s in self.processor.subscriptions()}:
            raise ValueError(f"{self.name}: a standby member cannot read its own outputs")

    def _send_or_hold(self, entry: Outgoing) -> None:
        """Send, unless this is a standby and the entry is one of the outputs only the
        active member sends (`Processor.outputs`; a replica's own checkpoints, say, are
        every member's to send)."""
        if self.active or (entry.topic, entry.partition) not in self._followed:
            self._send(entry)
        else:
            self._held[entry.sequence] = entry

    def _release_held(self) -> None:
        """Drop the held entries the log already holds (acknowledged where they lie)."""
        for sequence, entry in list(self._held.items()):
            output = (entry.topic, entry.partition)
            if entry.cause is not None and self._on_log.holds(entry.cause, output):
                del self._held[sequence]
                # At or before the last output seen there: a lower bound is all the store
                # needs (it is where a later look for unsent entries starts).
                where = self._last_output.get(output, -1)
                self._acknowledged[sequence] = Delivered(entry.topic, entry.partition, where)

    def _follow(self, message: Any) -> None:
        """An output partition's record or end, as a standby member sees it."""
        key = (message.topic(), message.partition())
        if message.error() is not None:  # end of the partition
            self._followed[key] = max(self._followed[key], message.offset())
            return
        self._followed[key] = message.offset() + 1
        where = self._note_output(message)
        if where is None or self.active:
            return
        self._outgoing = [
            e
            for e in self._outgoing
            if e.cause is None or not self._on_log.holds(e.cause, (e.topic, e.partition))
        ]
        self._release_held()

    def _elect(self) -> None:
        """Follow the election: take over once the output topics are read to their end,
        or stand by."""
        assert self._election is not None
        self._election.poll()
        if self._election.active and not self.active:
            if self._takeover is None:
                self._takeover = self._ends_now(
                    sorted({t for t, _ in self._followed}), self._followed
                )
                log.info("%s: elected; reading the outputs to their end first", self.name)
            if all(self._followed[k] >= end for k, end in self._takeover.items()):
                self._take_over()
        elif not self._election.active and self.active:
            self.active = False
            self._takeover = None
            log.warning("%s: no longer active; standing by", self.name)

    def _ends_now(
        self, topics: Sequence[str], partitions: Mapping[Partition, int]
    ) -> dict[Partition, int]:
        """These partitions' ends now, asked with a reader of its own (finding them
        reassigns the reader that asks, and this one must keep its inputs)."""
        if not topics:
            return {}
        reader = Reader(self.bootstrap, client_id=f"{self.name}-ends", config=self._config)
        try:
            spans = reader.end_offsets_of(topics)
        finally:
            reader.close()
        return {key: spans[key][1] for key in partitions}

    def _take_over(self) -> None:
        self.commit()  # what is handled goes into the outbox first
        self._release_held()
        held = [self._held[s] for s in sorted(self._held)]
        self._held = {}
        self.active = True
        self._takeover = None
        log.warning("%s: active; sending the %d held outputs not on the log", self.name, len(held))
        for entry in held:
            self._send(entry)

    def _lead(self) -> None:
        """A ticking processor's election. Elected, it reads every input to its end as of
        now (the last leader's outputs included: it folds them as any other input), then
        ticks: what it decides follows everything the last leader sent. Losing the lead
        once it has ticked, it stops (`LostLead`): its memory holds decisions a standby
        must not have, and a restart reads the log again as a standby."""
        assert self._election is not None
        self._election.poll()
        if self._election.active and not self.active:
            if self._takeover is None:
                self._takeover = self._ends_now(sorted({t for t, _ in self._start}), self._start)
                log.info("%s: elected; reading the inputs to their end first", self.name)
            read = {key: self._read_to(key) for key in self._takeover}
            if self.live and all(read[key] >= end for key, end in self._takeover.items()):
                self.active = True
                self._takeover = None
                self._next_tick = 0.0
                log.warning("%s: active; deciding from here", self.name)
        elif not self._election.active and self.active:
            raise LostLead(f"{self.name}: another member leads now; restart to stand by")

    def _read_to(self, key: Partition) -> int:
        """The next offset to handle on an input partition."""
        return max(self._handled_to.get(key, -1) + 1, self._start[key])

    # -- the loop --------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        until_caught_up: bool = False,
        idle_exit_s: float | None = None,
    ) -> None:
        """Process until `stop`; with `until_caught_up`, return once the inputs' ends as of
        the start are committed and acknowledged; with `idle_exit_s`, once caught up and
        without input that long."""
        if not self.opened:
            self.open()
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                got = self.step()
                now = time.monotonic()
                if got:
                    idle_since = now
                settled = self.live and not self._uncommitted() and self._sent.in_flight == 0
                if until_caught_up and settled:
                    return
                if idle_exit_s is not None and settled and now - idle_since > idle_exit_s:
                    return
        finally:
            self.close()

    def step(self) -> int:
        """One poll, its handling and whatever commit and sends are due; the number of
        records polled (EOF events included)."""
        if self._gate is not None and self._gate.restarted():
            # What this process read since may not be what the new broker holds: start
            # again from the store (the supervisor restarts it).
            raise BrokerRestarted(f"{self.name}: the broker was restarted; restart to go on")
        messages = self._poll()
        if self._group is not None:
            # Polled from the start, so that joining the group goes on meanwhile; what it
            # brings waits until the processor has caught up with its other inputs.
            self._group_backlog += self._poll_group()
            if self.live:
                messages += self._group_backlog
                self._group_backlog = []
        if self.pace.together:
            self._take_together(messages)
        else:
            for message in messages:
                self._take(message)
        if self._election is not None:
            self._lead() if self._led else self._elect()
        self._tick(bool(messages))
        self._acknowledged.update(self._sent.take())
        if self._commit_due(bool(messages)):
            self.commit()
        return len(messages)

    def _poll(self) -> list[Any]:
        """What is there: waits for the first record (at most `poll_s`, or what is left of
        the linger), then takes what else is already fetched, up to `batch`. A batch
        consume would wait its whole timeout for a full batch."""
        timeout = self.pace.poll_s
        now = time.monotonic()
        if self._uncommitted() and self.pace.linger_s:
            timeout = min(timeout, self.pace.linger_s - (now - self._first_pending))
        if self.pace.tick_s is not None and self.live and (self.active or not self._led):
            timeout = min(timeout, self._next_tick - now)  # wake for the next tick
        timeout = max(0.0, timeout)
        if self._feed is not None:
            return self._poll_fed(timeout)
        first = self.reader.poll_raw(timeout)
        if first is None:
            return []
        if self.pace.batch == 1:
            return [first]
        return [first, *self.reader.poll_batch(self.pace.batch - 1, 0)]

    def _poll_fed(self, timeout: float) -> list[Any]:
        """What was fetched, then what the feed brought (waiting on the feed when nothing
        was fetched): fetched first, so that a partition's older records, fetched, come
        before the newer ones the feed brought and neither is set aside."""
        assert self._feed is not None
        fetched = self.reader.poll_batch(self.pace.batch, 0)
        wait = 0.0 if fetched else min(timeout, FEED_WAIT_S)
        return fetched + self._feed.take(wait, self.pace.batch - len(fetched))

    def _poll_group(self) -> list[Any]:
        assert self._group is not None
        out = []
        for message in self._group.consume(self.pace.batch, 0.0):
            error = message.error()
            if error is None:
                out.append(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                raise KafkaException(error)
        return out

    def _take(self, message: Any) -> None:
        admitted = self._admit(message)
        if admitted is not None:
            self._handle([admitted])

    def _take_together(self, messages: Sequence[Any]) -> None:
        """A poll's records in runs that go together (`Processor.together`): each run
        handled at once and committed before the next begins, so that a record alone is
        answered as soon as it was handled, not when the whole poll is."""
        run: list[tuple[Record[Any], tuple[str, int, int]]] = []
        for message in messages:
            admitted = self._admit(message)
            if admitted is None:
                continue
            if run and not self.processor.together(run[0][0], admitted[0]):
                self._handle(run)
                self.commit()
                run = []
            run.append(admitted)
        if run:
            self._handle(run)

    def _admit(self, message: Any) -> tuple[Record[Any], tuple[str, int, int]] | None:
        """A polled message as the record to handle and its position, once it may be
        handled (None: an end of partition, a record handled already, a standby's output
        followed, a dead letter)."""
        if self._next and not self._in_order(message):
            return None
        if self._gate is not None and message.error() is None:
            self._gate.wait(message.topic(), message.partition(), message.offset())
        if self._followed and (message.topic(), message.partition()) in self._followed:
            self._follow(message)
            return None
        if self._catch_up is not None and not self.live and self._catch_up.saw(message):
            self._go_live()
        if message.error() is not None:  # end of a partition
            return None
        key = (message.topic(), message.partition())
        offset = message.offset()
        EVENTS.labels(self.processor.role, key[0], "in").inc()
        try:
            record = record_of(message, self.codec, self._schemas.get(key[0]))
        except DecodeError as exc:
            self._mark(key[0], key[1], offset)
            self._dead_letter(message, exc)
            return None
        return record, (key[0], key[1], offset)

    def _mark(self, topic: str, partition: int, offset: int) -> None:
        """An input handled (or skipped): its position goes into the next commit."""
        key = (topic, partition)
        if not self._outgoing and not self._handled:
            self._first_pending = time.monotonic()
        self._handled += 1
        self._positions[key] = offset
        if self._led:
            self._handled_to[key] = offset
        if self._group is not None and topic in self._group_topics:
            self._group_handled[key] = offset

    def _handle(self, admitted: Sequence[tuple[Record[Any], tuple[str, int, int]]]) -> None:
        records = [record for record, _ in admitted]
        for _, source in admitted:
            self._mark(*source)
        try:
            if len(records) == 1:
                handled = [self.processor.handle(records[0], self.store)]
            else:
                handled = self.processor.handle_all(records, self.store)
        except BaseException:
            self._broken = True
            raise
        if len(handled) != len(records):
            self._broken = True
            raise RuntimeError(f"{self.name}: handle_all answered {len(handled)} of {len(records)}")
        for outputs, (_, source) in zip(handled, admitted, strict=True):
            if outputs and self._led and not self.active:
                self._broken = True
                raise RuntimeError(
                    f"{self.name}: a processor led by its ticks sent outputs from `handle` "
                    "before its first tick (a standby would send them too)"
                )
            self._enqueue(outputs, source)

    def _in_order(self, message: Any) -> bool:
        """Whether a fed partition's record is the next to handle (each comes twice, by
        the feed and by fetching); other records always are. A fetched record may skip
        offsets (compaction, transaction markers); the feed's ahead of the fetch waits
        to be fetched."""
        key = (message.topic(), message.partition())
        expected = self._next.get(key)
        fed = isinstance(message, FedMessage)
        if expected is None:
            return not fed  # the feed sends every partition of a topic, not only those read
        if message.error() is not None:
            return True
        offset = message.offset()
        if offset < expected or (fed and offset != expected):
            return False
        self._next[key] = offset + 1
        self.fed += fed
        return True

    def _dead_letter(self, message: Any, error: DecodeError) -> None:
        """Skip an input that does not decode, and say so on the dead-letter topic.

        Only an active member sends (a standby skips alike and stays quiet, or both would
        send one); a processor with `dead_letters` off only logs and counts."""
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        self.skipped += 1
        EVENTS.labels(self.processor.role, topic, "skipped").inc()
        log.warning(
            "%s: skipping an undecodable record at %s[%d]@%d: %s",
            self.name,
            topic,
            partition,
            offset,
            error,
        )
        if not (self.processor.dead_letters and self.active and self._find_dead_letters()):
            return
        raw = message.value() or b""
        key = message.key()
        timestamp = message.timestamp()[1]
        letter = DeadLetter(
            processor=self.name,
            code=error.code,
            reason=str(error)[:DEAD_REASON_CHARS],
            key=key.decode(errors="replace") if key is not None else None,
            value=raw[:DEAD_VALUE_BYTES],
            value_size=len(raw),
            cause=Position(topic=topic, partition=partition, offset=offset),
        )
        # The skipped record's time, not the clock's: the dead letter is the record's.
        output = Output(DEADLETTERS, letter, self.name, timestamp if timestamp > 0 else None)
        self._enqueue([output], (topic, partition, offset))

    def _find_dead_letters(self) -> bool:
        """Note the dead letters this processor sent before, once per run; False when there
        is no dead-letter topic to send to."""
        if self._dead_letters_found is None:
            reader = Reader(self.bootstrap, client_id=f"{self.name}-dead", config=self._config)
            try:
                spans = reader.end_offsets_of([DEADLETTERS.name])
                starts = {key: low for key, (low, end) in spans.items() if end > low}
                until = {key: spans[key][1] for key in starts}
                for message in reader.read(starts, until=until) if starts else ():
                    self._note_output(message)
                self._dead_letters_found = True
            except KeyError:
                log.error("%s: no topic %s: dead letters are not sent", self.name, DEADLETTERS.name)
                self._dead_letters_found = False
            finally:
                reader.close()
        return self._dead_letters_found

    def _tick(self, polled: bool) -> None:
        """Ticks keep their cadence (a proposer's blocks come every interval, not every
        interval plus the loop's lateness); one that fell behind does not burst."""
        every = self.pace.tick_s
        if every is None or not self.live or (self._led and not self.active):
            return
        now = time.monotonic()
        if now < self._next_tick and not (polled and self.processor.tick_due()):
            return
        if now >= self._next_tick:
            self._next_tick += every
            if self._next_tick < now:  # fell behind: do not burst
                self._next_tick = now + every
        try:
            outputs = self.processor.tick(int(self.clock() * 1000), self.store)
        except BaseException:
            self._broken = True
            raise
        if outputs and not self._outgoing and not self._handled:
            self._first_pending = now
        self._enqueue(outputs, None)

    def _enqueue(self, outputs: Sequence[Output], source: tuple[str, int, int] | None) -> None:
        """Encode outputs into outbox entries (`source`: the input they come from)."""
        for index, output in enumerate(outputs):
            cause = (*source, index) if source is not None else None
            spec = output.topic
            partition = self._partition_for(spec.name, output.key)
            if cause is not None and self._already_sent(cause, (spec.name, partition)):
                continue
            event = output.event
            if spec.schema != event.SCHEMA:
                raise TypeError(f"{self.name}: a {event.SCHEMA} sent to {spec.name}")
            self._outgoing.append(
                Outgoing(
                    sequence=self._sequence,
                    topic=spec.name,
                    partition=partition,
                    key=output.key,
                    value=self.codec.encode_event(event),
                    timestamp_ms=output.timestamp_ms,
                    cause=cause,
                )
            )
            self._sequence += 1

    def _partition_for(self, topic: str, key: str | None) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = self._partitions[topic] = len(self.reader.partitions(topic))
        return partition_of(key, count) if key is not None else 0

    def _uncommitted(self) -> bool:
        return bool(self._handled or self._outgoing)

    def _commit_due(self, polled: bool) -> bool:
        if not self._uncommitted():
            return bool(self._acknowledged) and time.monotonic() - self._last_commit > ACK_COMMIT_S
        if self.pace.linger_s == 0 or not polled:
            return True
        waited = time.monotonic() - self._first_pending
        return self._handled >= self.pace.batch or waited >= self.pace.linger_s

    def commit(self) -> None:
        """Write state, positions and outbox in one go, then send the new outbox entries."""
        outgoing, self._outgoing = self._outgoing, []
        acknowledged, self._acknowledged = self._acknowledged, {}
        self.store.commit(self._positions, outgoing, acknowledged)
        self._last_commit = time.monotonic()
        if self._group is not None:
            self._commit_group()
        self._positions = {}
        self._handled = 0
        for entry in outgoing:
            self._send_or_hold(entry)

    def _commit_group(self, wait: bool = False) -> None:
        """Commit to the group how far each of its partitions may resume (the processor may
        hold a partition back, and let it go at a later commit)."""
        assert self._group is not None
        offsets = []
        for key, handled in self._group_handled.items():
            resume = self.processor.resume_from(key, handled)
            if resume > self._group_committed.get(key, -1):
                self._group_committed[key] = resume
                offsets.append(TopicPartition(key[0], key[1], resume))
        if offsets and wait:
            self._group.commit(offsets=offsets, asynchronous=False)
        elif offsets:
            self._group.commit(offsets=offsets, asynchronous=True)

    def _send(self, entry: Outgoing) -> None:
        sequence = f"{self._identity}:{entry.sequence}".encode()
        headers = [(ORIGIN, self.name.encode()), (SEQUENCE, sequence)]
        if entry.cause is not None:
            headers.append((CAUSE, _cause_header(entry.cause)))
        future = self.producer.send_raw(
            entry.topic,
            entry.value,
            key=entry.key,
            partition=entry.partition,
            timestamp_ms=entry.timestamp_ms,
            headers=headers,
        )
        self._sent.watch(entry.sequence, future)
        EVENTS.labels(self.processor.role, entry.topic, "out").inc()

    # -- stop -------------------------------------------------------------------------------

    def drain(self, timeout: float = 30.0) -> None:
        """Commit what is pending and wait until every sent entry is acknowledged."""
        if self._uncommitted():
            self.commit()
        if self._producer is not None:
            self._producer.flush(timeout)
        self._acknowledged.update(self._sent.take())
        if self._acknowledged:
            self.store.commit({}, (), self._acknowledged)
            self._acknowledged = {}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.opened and not self._broken:
                self.drain()
        finally:
            if self._group is not None:
                self._group.close()
                self._group = None
            if self._election is not None:
                self._election.close()
                self._election = None
            if self._feed is not None:
                self._feed.close()
                self._feed = None
            self.reader.close()
            if self._own_producer and self._producer is not None:
                self._producer.close()
            self.opened = False
