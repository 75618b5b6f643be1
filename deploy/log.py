"""The log a devnet or a broker host runs: the embedded broker with its durable archive,
or an external Kafka cluster's topics.

`Log.start` starts the embedded broker (unless the settings name a cluster), creates the
catalogue's topics, re-seeds the broker from the archive (the broker keeps records in
memory) and starts archiving; `Log.stop` lets the archive catch up with every partition's
end before it stops the broker, so a graceful stop loses nothing.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable
from typing import TextIO

from streams.admin import ensure_topics
from streams.archive import Archiver, TopicArchive
from streams.broker import EmbeddedBroker
from streams.durable import ENV as DURABLE_ENV
from streams.durable import Watermarks
from streams.handover import ENV as HANDOVER_ENV
from streams.kafka import Producer, Reader
from streams.settings import Settings
from streams.topics import TOPICS

Check = tuple[Callable[[], bool], str]
#: Where `lattice broker` listens unless told otherwise: Kafka's usual port.
BROKER_PORT = 9092


class Log:
    def __init__(
        self,
        settings: Settings,
        say: Callable[[str, str], None],
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        """`host` and `port`: where the embedded broker listens, and what it advertises
        (an address every client can reach; by default loopback and `broker_port`)."""
        self.settings = settings
        self.host = host
        self.port = settings.broker_port if port is None else port
        self.say = say
        self.broker: EmbeddedBroker | None = None
        self.archiver: Archiver | None = None
        self._died = False

    def start(self) -> str:
        """Start it; the bootstrap servers."""
        s = self.settings
        if s.embedded:
            self.broker = EmbeddedBroker(
                host=self.host,
                port=self.port,
                log_file=s.data_dir / "broker.log",
                start_timeout=s.broker_start_timeout,
            ).start()
            bootstrap = self.broker.bootstrap
            self.say("kafka", f"{bootstrap} (embedded tansu, memory storage)")
        else:
            bootstrap = str(s.kafka)
            self.say("kafka", f"{bootstrap} (external cluster)")
        created = ensure_topics(
            bootstrap, TOPICS, replication=s.replication_factor, extra=s.kafka_config
        )
        self.say("topics", f"{len(TOPICS)} in the catalogue, {len(created)} created")
        if s.embedded:
            archive = TopicArchive(s.data_dir / "archive")
            seeder = Producer(bootstrap, client_id=f"{s.client_id}-reseed", gate=None)
            reader = Reader(bootstrap, client_id=f"{s.client_id}-reseed")
            try:
                count = archive.reseed(seeder, reader, TOPICS, progress=self._reseeded)
            finally:
                seeder.close()
                reader.close()
            self.say("archive", f"{s.data_dir / 'archive'} ({count} records re-seeded)")
            path = s.data_dir / "archive" / "durable"
            marks = Watermarks.publish(path, archive.counts(TOPICS))
            # The archiver's threads share this process with the gateway's busy event
            # loop, and every acknowledgement and every processor's input waits for them:
            # hand the GIL over every 1 ms rather than every 5.
            sys.setswitchinterval(0.001)
            handover = f"lattice-archive-{os.getpid()}-{secrets.token_hex(4)}"
            self.archiver = Archiver(archive, bootstrap, TOPICS, marks, handover=handover)
            self.archiver.start()
            # Every process started from here on (the gateway, the children) acknowledges
            # and reads only what is on disk, and hands what it sends to the archiver.
            os.environ[DURABLE_ENV] = str(path)
            os.environ[HANDOVER_ENV] = handover
        return bootstrap

    def _reseeded(self, topic: str, count: int) -> None:
        self.say("re-seeded", f"{topic}: {count} records")

    def checks(self) -> list[Check]:
        """What stops its owner outright: the log itself failing."""
        checks: list[Check] = []
        if self.broker is not None:
            broker = self.broker
            checks.append((lambda: not broker.running, "the embedded broker exited"))
        if self.archiver is not None:
            archiver = self.archiver
            checks.append((lambda: archiver.failed is not None, "archiving failed"))
        return checks

    def broker_died(self) -> bool:
        """Whether the embedded broker had exited by itself when the log was stopped."""
        return self._died

    def stop(self) -> None:
        os.environ.pop(DURABLE_ENV, None)
        os.environ.pop(HANDOVER_ENV, None)
        self._died = self.broker is not None and not self.broker.running
        if self.archiver is not None:
            try:
                if self.broker is not None and self.broker.running:
                    self.archiver.drain()
            finally:
                self.archiver.stop()
            total = sum(self.archiver.archive.counts(TOPICS).values())
            self.say("archived", f"{total} records in {self.settings.data_dir / 'archive'}")
        if self.broker is not None:
            self.broker.stop()


def serve_log(settings: Settings, out: TextIO) -> None:
    """`lattice broker`: the log alone, on an address other hosts reach, until SIGINT or
    SIGTERM (or until the broker or the archive fails)."""
    import signal
    import threading

    from deploy.host import HostError, locked

    def say(label: str, text: str) -> None:
        print(f"  {label:<11} {text}", file=out, flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with locked(settings.data_dir, "broker"):
        print("lattice broker", file=out, flush=True)
        if not settings.embedded:
            raise HostError("lattice broker runs the embedded broker: drop --kafka")
        log = Log(settings, say, settings.host, settings.broker_port or BROKER_PORT)
        try:
            bootstrap = log.start()
            say("nodes", f"lattice node --kafka {bootstrap}")
            print("ready; Ctrl-C to stop", file=out, flush=True)
            problem = None
            while problem is None and not stop.wait(0.5):
                problem = next((why for failed, why in log.checks() if failed()), None)
            if problem:
                raise HostError(problem)
        finally:
            log.stop()
            print("stopped", file=out, flush=True)
