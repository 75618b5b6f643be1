"""Typed Avro producer and consumer helpers on confluent-kafka.

Values are Avro single-object encoded by the codec (`schemas.codec`), keys are UTF-8 text.
The producer is idempotent (no duplicates or reordering from its own retries) and
partitions keys with murmur2, like the Java client and Faust's aiokafka, so every client
agrees where a key lives. Delivery failures are never swallowed: each send returns a
future that fails with `DeliveryError`, and `flush` raises if anything did not land.

Reading "to the end" uses partition-EOF events, not the high watermark: the embedded
broker (tansu) reports a high watermark one past the *first* record of the last batch,
so a watermark can sit below records that are already readable. EOF events carry the
true end on both tansu and Apache Kafka.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka import Producer as _KafkaProducer
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from schemas.codec import Codec, CodecError, DecodeError, default_codec
from schemas.events import Position
from schemas.record import Event
from streams.durable import Gate
from streams.handover import Forwarder
from streams.metrics import STATS_INTERVAL_MS, record_statistics
from streams.topics import BY_NAME, TopicSpec

E = TypeVar("E", bound=Event)
log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """A record was not acknowledged by the broker."""


@dataclass(frozen=True)
class Delivered:
    topic: str
    partition: int
    offset: int


class Record(NamedTuple, Generic[E]):
    """A consumed record: its place on the log and its typed event. (A named tuple: one is
    made for every record every consumer reads, and a tuple is built in one step.)"""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    event: E
    #: The encoded value as it is on the log (a processor that keeps records stores this).
    raw: bytes

    @property
    def position(self) -> Position:
        """This record's position, as events carry it in their `cause`."""
        return Position(topic=self.topic, partition=self.partition, offset=self.offset)


def client_config(bootstrap: str, *layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """librdkafka settings: the bootstrap servers, then each layer over the previous."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap}
    for layer in layers:
        config.update(layer or {})
    return config


PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "partitioner": "murmur2_random",  # the Java client's and aiokafka's key placement
    "linger.ms": 0,
    "message.timeout.ms": 30_000,
}
#: For the market's request/response hops. The embedded broker answers a waiting fetch
#: within a few ms of new data when the wait is short (measured: 5 ms p50 delivery at 20 ms,
#: 2 ms at 5 ms), but every idle consumer then fetches 1000/wait times a second, and at 5 ms
#: four market consumers kept the broker at ~85% of a core on an idle devnet.
LOW_LATENCY_READ: dict[str, Any] = {"fetch.wait.max.ms": 20, "fetch.min.bytes": 1}
#: How long finding a partition's end reads on before asking the watermark again.
PROBE_PATIENCE_S = 0.5
READER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    "fetch.wait.max.ms": 100,
    "auto.offset.reset": "earliest",
}


def record_of(message: Any, codec: Codec, schema: str | None = None) -> Record[Event]:
    """A confluent-kafka message as a decoded record of `schema`, by default its catalogue
    topic's (`schemas.DecodeError` if it is not one: a record of another schema on a topic
    would reach code that knows only the topic's)."""
    raw = message.value()
    key = message.key()
    topic = message.topic()
    if schema is None and topic in BY_NAME:
        schema = BY_NAME[topic].schema
    return Record(
        topic,
        message.partition(),
        message.offset(),
        message.timestamp()[1],
        key.decode(errors="replace") if key is not None else None,
        codec.decode_event(raw, schema),
        raw,
    )


def decodable(messages: Iterable[Any], codec: Codec) -> Iterator[Record[Event]]:
    """The records among `messages` that decode, each other one logged and skipped, as the
    processor runtime skips them: a replay must see what the live processors saw."""
    for message in messages:
        try:
            yield record_of(message, codec)
        except DecodeError as exc:
            log.warning(
                "skipping an undecodable record at %s[%d]@%d: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                exc,
            )


class Producer:
    """Sends Avro records to catalogue topics; a background thread serves delivery reports."""

    def __init__(
        self,
        bootstrap: str,
        *,
        codec: Codec | None = None,
        client_id: str = "lattice",
        config: Mapping[str, Any] | None = None,
        gate: Gate | Literal["env"] | None = "env",
        on_acknowledged: Callable[[Any, Sequence[tuple[str, bytes]]], None]
        | Literal["env"]
        | None = "env",
    ) -> None:
        """`gate`: where sends resolve only once their record is durable (`streams.durable`);
        by default the devnet's, when this process runs under one. `on_acknowledged`: given
        each record the broker acknowledged (its delivery report, and the headers sent:
        reports do not carry them), first: by default handed over to the devnet's archiver
        when this process runs under one (`streams.handover`); the archiver in the same
        process takes the gateway's records directly."""
        self.codec = codec or default_codec()
        self.gate = Gate.from_env() if gate == "env" else gate
        self._forwarder = Forwarder.from_env() if on_acknowledged == "env" else None
        self._on_acknowledged = self._forwarder if on_acknowledged == "env" else on_acknowledged
        #: Sends acknowledged by the broker and waiting to be durable.
        self._gated: set[Future[Delivered]] = set()
        self._producer = _KafkaProducer(
            client_config(bootstrap, PRODUCER_DEFAULTS, {"client.id": client_id}, config)
        )
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._abandoned = False
        self._poller = threading.Thread(target=self._serve, name="producer-poll", daemon=True)
        self._poller.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def send(
        self,
        topic: TopicSpec,
        event: Event,
        *,
        key: str | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> Future[Delivered]:
        """Encode and send one event; the future resolves once the broker acknowledged it.

        Encoding errors, and an event of another schema than the topic's, raise at once
        (nothing is sent); delivery errors fail the future.
        """
        if topic.schema != event.SCHEMA:
            raise CodecError(f"{topic.name} holds {topic.schema} records, not {event.SCHEMA}")
        payload = self.codec.encode_event(event)
        return self.send_raw(
            topic.name, payload, key=key, partition=partition, timestamp_ms=timestamp_ms
        )

    def send_raw(
        self,
        topic: str,
        payload: bytes | None,
        *,
        key: str | bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Future[Delivered]:
        """Send an already encoded record (the archive re-seeds the broker this way)."""
        future: Future[Delivered] = Future()
        # Read without the lock: the gateway abandons on its event loop, where it sends.
        if self._abandoned:
            future.set_exception(DeliveryError(f"{topic}: the log went away (abandoned)"))
            return future
        gate = self.gate

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                self._failed(future, f"{topic}: {err.str()}")
                return
            delivered = Delivered(msg.topic(), msg.partition(), msg.offset())
            if self._on_acknowledged is not None:
                self._on_acknowledged(msg, headers or ())
            if gate is None:
                future.set_result(delivered)
                return
            with self._lock:
                self._gated.add(future)
            durable: Future[Delivered] = Future()
            durable.add_done_callback(lambda done: self._settled(future, done))
            gate.resolve(msg.topic(), msg.partition(), msg.offset(), durable, delivered)

        kwargs: dict[str, Any] = {"on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        if headers:
            kwargs["headers"] = list(headers)
        while True:
            try:
                self._producer.produce(topic, value=payload, key=key, **kwargs)
                return future
            except BufferError:
                # Local queue full: let delivery reports drain it, then retry.
                self._producer.poll(0.1)
            except KafkaException as exc:
                raise DeliveryError(f"{topic}: {exc}") from exc

    def _failed(self, future: Future[Delivered], reason: str) -> None:
        with self._lock:
            self._failures.append(reason)
        if not future.done():  # an abandoned send failed already
            future.set_exception(DeliveryError(reason))

    def _settled(self, future: Future[Delivered], durable: Future[Delivered]) -> None:
        """A gated send is durable, or never will be (the broker restarted first)."""
        with self._lock:
            self._gated.discard(future)
        if future.done():  # abandoned
            return
        error = durable.exception()
        if error is not None:
            self._failed(future, str(error))
        else:
            future.set_result(durable.result())

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every outstanding record (to be durable, with a gate); raise
        `DeliveryError` if any failed."""
        started = time.monotonic()
        remaining = self._producer.flush(timeout)
        with self._lock:
            gated = list(self._gated)
        left = max(0.0, timeout - (time.monotonic() - started))
        _, undone = wait_futures(gated, left) if gated else ((), ())
        with self._lock:
            failures, self._failures = self._failures, []
        if remaining:
            failures.append(f"{remaining} records still unacknowledged after {timeout}s")
        if undone:
            failures.append(f"{len(undone)} records still not on disk after {timeout}s")
        if failures:
            raise DeliveryError("; ".join(failures))

    def abandon(self) -> None:
        """Fail every send not yet acknowledged, or not yet durable, at once (for a log that
        is gone: whoever waits on one is told now, not when the client's timeouts run out;
        none of them was acknowledged to anyone). Sends after this fail at once: a request
        that comes in while the gateway stops is told the log is unavailable now, not cut
        when its wait outlasts the server's graceful stop."""
        self._abandoned = True
        self._producer.purge(in_queue=True, in_flight=True, blocking=False)
        # The purged records' reports fail their futures; they are queued as the purge
        # reaches each (a loaded machine may take a moment), so serve them here, briefly.
        until = time.monotonic() + 1.0
        self._producer.poll(0)
        while len(self._producer) and time.monotonic() < until:
            self._producer.poll(0.01)
        with self._lock:
            gated, self._gated = self._gated, set()
        for future in gated:
            self._failed(future, "the log went away before the record was durable")

    def close(self, timeout: float = 30.0) -> None:
        if self._closed.is_set():
            return
        try:
            self.flush(timeout)
        finally:
            self._closed.set()
            self._poller.join()
            # What the flush left is dropped: otherwise closing waits for the client's own
            # timeouts (30 s) on a broker that may be gone.
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._producer.poll(0)
            # Release the connections now: a broker waits for open clients when stopping.
            self._producer.close()
            if self._forwarder is not None:
                self._forwarder.close()


class Reader:
    """A decoding consumer over explicit partitions (no consumer group, no commits)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        codec: Codec | None = None,
        client_id: str = "lattice-reader",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.codec = codec or default_codec()
        # librdkafka wants a group id even for manual assignment; nothing is committed.
        identity = {"client.id": client_id, "group.id": f"{client_id}-unmanaged"}
        observed = {"stats_cb": record_statistics, "statistics.interval.ms": STATS_INTERVAL_MS}
        self._consumer = Consumer(
            client_config(bootstrap, READER_DEFAULTS, identity, observed, config)
        )
        # Consumer tuning means nothing to the admin client (librdkafka warns about it).
        admin = {k: v for k, v in (config or {}).items() if not k.startswith("fetch.")}
        self._admin: AdminClient | None = AdminClient(
            client_config(bootstrap, {"client.id": client_id}, admin)
        )

    def partitions(self, topic: str, timeout: float = 10.0) -> list[int]:
        metadata = self._consumer.list_topics(topic, timeout=timeout)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            raise KeyError(f"topic {topic!r} does not exist on the broker")
        return sorted(info.partitions)

    def assign(self, positions: Mapping[tuple[str, int], int]) -> None:
        self._consumer.assign(
            [TopicPartition(t, p, off) for (t, p), off in sorted(positions.items())]
        )

    def unassign(self) -> None:
        self._consumer.unassign()

    def poll_raw(self, timeout: float) -> Any:
        """The next message or EOF event (confluent-kafka Message), or None on timeout."""
        message = self._consumer.poll(timeout)
        error = message.error() if message is not None else None
        if error is not None and error.code() != KafkaError._PARTITION_EOF:
            raise KafkaException(error)
        return message

    def poll_batch(self, max_messages: int, timeout: float) -> list[Any]:
        """Up to `max_messages` messages and EOF events, waiting at most `timeout`."""
        batch = self._consumer.consume(max_messages, timeout)
        for message in batch:
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                raise KafkaException(error)
        return list(batch)

    def decode(self, message: Any) -> Record[Event]:
        """A polled message as its record; `schemas.DecodeError` when it does not decode."""
        return record_of(message, self.codec)

    def read(
        self,
        positions: Mapping[tuple[str, int], int],
        *,
        follow: bool = False,
        until: Mapping[tuple[str, int], int] | None = None,
        idle_timeout: float = 30.0,
    ) -> Iterator[Any]:
        """Raw messages from the given positions; stops at the end unless `follow`.

        Without `follow`, the end is `until` (one past the last offset wanted, per
        partition) or, where none is given, each partition's end as of this call. A fixed
        end is what makes a read of a live topic finish: partition EOF alone can chase a
        partition written faster than the broker answers a fetch (a devnet's proposed
        blocks did, for over a minute). `idle_timeout` guards against a broker that stops
        answering mid-read.
        """
        if not follow and until is None:
            spans = self.end_offsets_of(sorted({topic for topic, _ in positions}))
            until = {key: spans[key][1] for key in positions if key in spans}
        return self._drain(positions, None if follow else until or {}, idle_timeout)

    def _drain(
        self,
        positions: Mapping[tuple[str, int], int],
        ends: Mapping[tuple[str, int], int] | None,
        idle_timeout: float,
    ) -> Iterator[Any]:
        """Messages from `positions`: forever where `ends` is None, else until every
        partition reached its end there (or its EOF, where it has none)."""
        pending = {
            key
            for key, start in positions.items()
            if ends is None or start < ends.get(key, start + 1)
        }
        if not pending:
            return
        self.assign(positions)
        last_progress = time.monotonic()
        while ends is None or pending:
            message = self.poll_raw(0.2)
            if message is None:
                if ends is not None and time.monotonic() - last_progress > idle_timeout:
                    raise TimeoutError(f"no end-of-partition seen for {sorted(pending)}")
                continue
            last_progress = time.monotonic()
            key = (message.topic(), message.partition())
            if message.error() is not None:  # partition EOF
                pending.discard(key)
                continue
            if ends is None:
                yield message
                continue
            end = ends.get(key)
            if key not in pending or (end is not None and message.offset() >= end):
                pending.discard(key)  # fetched past the end
                continue
            yield message
            if end is not None and message.offset() + 1 >= end:
                pending.discard(key)

    def end_offsets(self, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
        """(low, end) offsets per partition, the end being one past the last record."""
        both = self.end_offsets_of([topic], timeout)
        return {p: span for (_, p), span in both.items()}

    def end_offsets_of(
        self, topics: Sequence[str], timeout: float = 10.0
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """(low, end) per partition of several topics, in one round of requests.

        Watermarks come from one ListOffsets request per spec for every partition. On the
        embedded broker the watermark is the first offset of the last batch plus one (see
        the module docstring), so each non-empty partition is then read on from there to
        its EOF. A partition still being written may not reach EOF soon; for those the
        watermark is asked again every `PROBE_PATIENCE_S`, and once it has moved, the
        batch it now points into starts at or after the end as of the first request.

        It reassigns this reader's partitions to read them: ask before `assign`, or ask
        another reader.
        """
        metadata = self._consumer.list_topics(timeout=timeout).topics
        partitions = []
        for topic in topics:
            info = metadata.get(topic)
            if info is None or info.error is not None:
                raise KeyError(f"topic {topic!r} does not exist on the broker")
            partitions += [TopicPartition(topic, p) for p in sorted(info.partitions)]
        if not partitions:
            return {}
        lows = self._admin_offsets(partitions, OffsetSpec.earliest(), timeout)  # type: ignore[no-untyped-call]
        highs = self._admin_offsets(partitions, OffsetSpec.latest(), timeout)  # type: ignore[no-untyped-call]
        ends = {key: highs[key] for key in lows}
        pending = {key for key in ends if ends[key] > lows[key]}
        if pending:
            self.assign({key: max(lows[key], ends[key] - 1) for key in pending})
        last_progress = ask_again = time.monotonic()
        while pending:
            now = time.monotonic()
            if now - ask_again > PROBE_PATIENCE_S:
                ask_again = now
                moving = [TopicPartition(t, p) for t, p in sorted(pending)]
                latest = self._admin_offsets(moving, OffsetSpec.latest(), timeout)  # type: ignore[no-untyped-call]
                for key, later in latest.items():
                    if later > highs[key]:
                        ends[key] = max(ends[key], later - 1)
                        pending.discard(key)
                continue
            message = self.poll_raw(0.1)
            if message is None:
                if now - last_progress > timeout:
                    raise TimeoutError(f"no end-of-partition seen for {sorted(pending)}")
                continue
            last_progress = now
            key = (message.topic(), message.partition())
            if key not in pending:
                continue
            if message.error() is not None:  # partition EOF
                pending.discard(key)
            else:
                ends[key] = max(ends[key], message.offset() + 1)
        return {key: (lows[key], ends[key]) for key in lows}

    def _admin_offsets(
        self, partitions: list[TopicPartition], spec: Any, timeout: float
    ) -> dict[tuple[str, int], int]:
        if self._admin is None:
            raise RuntimeError("the reader is closed")
        futures = self._admin.list_offsets({tp: spec for tp in partitions}, request_timeout=timeout)
        return {(tp.topic, tp.partition): max(0, f.result().offset) for tp, f in futures.items()}

    def close(self) -> None:
        self._consumer.close()
        # The admin client has no close: dropping it now closes its connections now, not
        # at garbage collection (a broker stopping later would see them drop, loudly).
        self._admin = None


class CatchUp:
    """Which of a reader's partitions are still behind the ends they had when it started.

    A processor that rebuilds its state from the log before acting (the matcher assigns,
    the verifier settles only once caught up) must not wait for partition EOF alone: on a
    partition written faster than the broker answers a fetch, EOF may not come for as long
    as the writing goes on. The ends are taken once, up front; a partition is caught up at
    its EOF or once the record before its end has been read, whichever comes first.
    """

    def __init__(
        self,
        reader: Reader,
        positions: Mapping[tuple[str, int], int],
        spans: Mapping[tuple[str, int], tuple[int, int]] | None = None,
    ) -> None:
        """`spans`: the (low, end) offsets, when the caller has just asked for them."""
        if spans is None:
            spans = reader.end_offsets_of(sorted({topic for topic, _ in positions}))
        self._ends = {
            key: spans[key][1] for key, start in positions.items() if start < spans[key][1]
        }
        self.behind = set(self._ends)

    @property
    def done(self) -> bool:
        return not self.behind

    def saw(self, message: Any) -> bool:
        """Note a polled message or EOF event; True once nothing is behind."""
        key = (message.topic(), message.partition())
        if key in self.behind and (
            message.error() is not None or message.offset() + 1 >= self._ends[key]
        ):
            self.behind.discard(key)
        return not self.behind


def from_beginning(topic: str, partitions: Sequence[int]) -> dict[tuple[str, int], int]:
    return {(topic, p): OFFSET_BEGINNING for p in partitions}
