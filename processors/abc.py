"""The contracts between Lattice's parts, named and documented in one place.

Every consumer that derives state from the log (the DAG processor, execution, the matcher,
the verifier, the analytics sink, the proposers, the workers' job loop and the gateway's
followers) is a `Processor` run by the one runtime, `processors.runtime.Runtime`:

    poll -> decode -> handle -> commit -> send

- **poll**: records of the processor's `Subscription`s, from the positions its
  `StateStore` holds (a fresh store starts where each subscription says);
- **decode**: each value becomes its typed event (`schemas.events`) of its topic's schema;
  a record that does not decode is logged, sent to the dead-letter topic and skipped, its
  offset advancing like any other;
- **handle**: `Processor.handle(record, state)` (a `streams.kafka.Record`: position, typed
  event and raw bytes) reads and writes the state and returns the
  `Output`s the record causes; `Processor.tick(now_ms, state)` does the same for timers
  (leases, block intervals) once the processor has caught up with its inputs. Neither
  touches Kafka: outputs are values, and no processor waits on a delivery;
- **commit**: the state's changes, the input offsets they reflect and the outputs, encoded,
  go to the store in one atomic write (the outputs into its *outbox*);
- **send**: the outbox goes to the `RecordSink` in order, each record carrying headers that
  name its origin (the processor), its outbox sequence (with the store's identity) and its
  cause (the input position and the output's index). Acknowledged entries leave the outbox
  at a later commit.

A crash at any point duplicates nothing: before the commit nothing is durable and the
inputs are handled again; after it, the restarted runtime finds which outbox entries are
on the log already (by their headers, from the last acknowledged offsets on) and sends only
the rest. A processor whose store is lost and rebuilt from the log can ask the runtime to
look for its own earlier outputs (`Pace.rebuild_window`): outputs of inputs handled before
are then not sent again.

Processors whose state lives in memory (`processors.state.MemoryStore`: the gateway's views,
and processors that rebuild from the log at every start) run the same loop; their store
simply starts empty.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from schemas.record import Encoded, Event
from streams.kafka import Delivered, Record
from streams.topics import TopicSpec

#: A partition of a topic.
Partition = tuple[str, int]


class RecordSink(Protocol):
    """Where events go: a record is sent to a catalogue topic under a key.

    `send` validates and encodes at once (raising `schemas.CodecError` without sending
    anything) and returns a future that resolves when the record is durably acknowledged,
    or fails with `streams.kafka.DeliveryError`. `streams.kafka.Producer` is the Kafka one.
    """

    def send(
        self,
        topic: TopicSpec,
        event: Event,
        *,
        key: str | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> Future[Delivered]: ...


@dataclass(frozen=True)
class Output:
    """An event a processor sends: to `topic` under `key` (the topic's key, as text)."""

    topic: TopicSpec
    event: Event | Encoded
    key: str | None = None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Subscription:
    """An input of a processor.

    `start` is where a partition the store holds no position for begins: the beginning
    (a fold of the whole topic) or its end as of the start (only what comes next).
    `partitions` limits the input to some partitions (None: all); `key`, to the partition
    that key's records are in (a settler's own transactions). With `group`, the
    partitions are the share a consumer group gives this member (shared work, like the
    proposers' transactions), positions come from the group and the runtime commits them
    there after each store commit (as far as `Processor.resume_from` allows).
    `fed`: on a request's path, so once live its records also come from the devnet's
    durable feed the moment they are on disk (`streams.feed`), not only by fetching.
    """

    topic: TopicSpec
    start: Literal["beginning", "end"] = "beginning"
    partitions: tuple[int, ...] | None = None
    key: str | None = None
    group: str | None = None
    fed: bool = False


@dataclass(frozen=True)
class Pace:
    """How the runtime paces a processor.

    Commits come after every poll (the latency a request waits on), unless `linger_s`
    lets records gather up to `batch` between two commits (the analytics sink writes rows
    in bulk). `tick_s` is how often `tick` runs once caught up (None: never).
    `rebuild_window`, when above 0, is how many records at the end of each output
    partition the runtime reads at start for outputs of this processor already there.
    `durable_inputs`: under a devnet's archive, handle a record only once it is on disk
    (`streams.durable`); a processor may do without only where acting on a record that a
    hard stop then loses is harmless (the proposer's reasons are in its module).
    `together`: each poll's inputs go to `Processor.handle_all` in runs that go together
    (`Processor.together`; a worker's batch), each output still caused by its own input.
    """

    batch: int = 500
    linger_s: float = 0.0
    poll_s: float = 0.1
    tick_s: float | None = None
    #: librdkafka settings for the processor's reader (e.g. `LOW_LATENCY_READ`).
    read_config: Mapping[str, Any] | None = None
    rebuild_window: int = 0
    durable_inputs: bool = True
    together: bool = False


class State(abc.ABC):
    """What `handle` and `tick` read and write: bytes under bytes keys.

    Writes are pending until the runtime commits them with the offsets of the inputs that
    made them; reads see the pending writes.
    """

    @abc.abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    @abc.abstractmethod
    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys and values under a prefix, in key order."""

    @abc.abstractmethod
    def put(self, key: bytes, value: bytes) -> None: ...

    @abc.abstractmethod
    def delete(self, key: bytes) -> None: ...


@dataclass(frozen=True)
class Outgoing:
    """An outbox entry: an encoded output waiting for the broker's acknowledgement."""

    sequence: int
    topic: str
    partition: int
    key: str | None
    value: bytes
    timestamp_ms: int | None
    #: The input it came from and its index among that input's outputs (None: a tick's).
    cause: tuple[str, int, int, int] | None


class StateStore(abc.ABC):
    """Where a processor's state lives between commits, with what makes commits safe: the
    offset of the last input applied per partition, and the outbox."""

    @abc.abstractmethod
    def positions(self) -> dict[Partition, int]:
        """The last applied offset of every partition the store has applied records of."""

    @abc.abstractmethod
    def commit(
        self,
        positions: Mapping[Partition, int],
        outgoing: Sequence[Outgoing],
        acknowledged: Mapping[int, Delivered],
    ) -> None:
        """Write the pending state changes, the new positions, the new outbox entries, and
        drop the acknowledged ones (recording where they landed), all or nothing."""

    @abc.abstractmethod
    def outbox(self) -> list[Outgoing]:
        """Committed entries not yet acknowledged, in sequence order."""

    @abc.abstractmethod
    def delivered(self) -> dict[Partition, int]:
        """The offset of the last acknowledged entry on each output partition."""

    @abc.abstractmethod
    def next_sequence(self) -> int:
        """The sequence number the next outbox entry takes."""

    @abc.abstractmethod
    def identity(self) -> str:
        """A name made when the store was created: outbox sequences are this store's, and a
        store rebuilt from scratch must not take another's entries for its own."""

    def close(self) -> None:  # noqa: B027 (a store with no files has nothing to release)
        """Release the store's files."""


S = TypeVar("S", bound=StateStore)


class Processor(abc.ABC, Generic[S]):
    """A pure core behind the runtime: its inputs, and what each record does to its state.

    `handle` must be a deterministic function of the state and the record (no clock, no
    unseeded randomness): a replay of the same inputs rebuilds the same state and the same
    outputs. Decisions on the wall clock belong in `tick`, which gets the time as an
    argument and writes down what it decided as outputs.
    """

    #: Its name on the log: the origin header of its outputs, its Kafka client id.
    name: str
    #: What it is, for metrics (`lattice_events_total{process=...}`).
    role: str = "processor"
    pace: Pace = Pace()
    #: Whether inputs it skips as undecodable are sent to `lattice.deadletters` (they are
    #: always logged and counted). Off for the gateway's views: every gateway runs them
    #: under one name, from the beginning at every start.
    dead_letters: bool = True

    @abc.abstractmethod
    def subscriptions(self) -> Sequence[Subscription]: ...

    def restore(self, state: S) -> None:
        """Rebuild what the processor keeps in memory from its store, before any input."""

    @abc.abstractmethod
    def handle(self, record: Record[Any], state: S) -> Sequence[Output]: ...

    def handle_all(self, records: Sequence[Record[Any]], state: S) -> list[Sequence[Output]]:
        """Several inputs that go together (`Pace.together`): the outputs of each, in
        their order. The outputs `handle` gives each in turn; by default what it does."""
        return [self.handle(record, state) for record in records]

    def together(self, first: Record[Any], record: Record[Any]) -> bool:
        """Whether `record` joins the run that `first` began (`Pace.together`): a run is
        handled at once by `handle_all`, then committed."""
        return True

    def tick(self, now_ms: int, state: S) -> Sequence[Output]:
        """Timers: runs every `pace.tick_s` once the processor has caught up."""
        return ()

    def tick_due(self) -> bool:
        """Whether `tick` should run right after this poll rather than at its next interval
        (a job that just came in should not wait for the matcher's timer)."""
        return False

    def outputs(self) -> Sequence[TopicSpec]:
        """The topics it writes (read at start when `pace.rebuild_window` is set). As a hot
        standby (`Runtime(active_group=...)`), only the active member sends to these; any
        other output (a replica's own signed checkpoint) every member sends."""
        return ()

    def resume_from(self, partition: Partition, handled: int) -> int:
        """Where the member that takes a group partition next (this one restarted, or
        another) must begin, `handled` being the last offset handled here: by default the
        offset after it. A processor that keeps an input's effect in memory until it is on
        the log (the proposers' mempool) holds this back to the oldest such input, so that
        a crash loses none of them."""
        return handled + 1
