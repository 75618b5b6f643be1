"""The execution processor as a real process (kill -9 in the middle, restart, compare) and in
process under the runtime (a crash at each point of a commit)."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from processors.execution.genesis import Account as GenesisAccount
from processors.execution.genesis import Genesis, dev_genesis
from processors.execution.processor import (
    EXECUTED,
    ORDERED,
    RECEIPTS,
    REJECTED,
    VIRTUAL,
    ExecutionProcessor,
)
from processors.execution.replay import replay
from processors.execution.transactions import ChainRules
from processors.state import RocksStore
from schemas.events import BlockOrdered, VirtualChainChanged
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer, Reader, from_beginning
from streams.settings import CHAIN_ID
from streams.topics import TOPICS
from tests.processors.execution.test_ledger import Store, ordered, transfer
from tests.processors.harness import CrashPoint, crash, run_to_end

pytestmark = pytest.mark.broker
KEYS = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
]
BLOCKS = 60
PER_KEY = 15


def load() -> list[BlockOrdered]:
    blocks = []
    for n in range(1, BLOCKS + 1):
        raws = [
            transfer((n - 1) * PER_KEY + i, value=n, key=k) for k in KEYS for i in range(PER_KEY)
        ]
        if n % 7 == 0:
            raws.append(raws[0])  # a duplicate, to be rejected
        blocks.append(ordered(n, raws))
    return blocks


def virtual(blocks: list[BlockOrdered], depth: int = 3) -> list[VirtualChainChanged]:
    """The changes a DAG processor would send for this final chain with a finality depth
    of `depth`: each block joins the tip; every fourth is first beaten to it by a side
    block (carrying some of its transactions, stamped later) that a reorganisation drops."""
    out: list[VirtualChainChanged] = []

    def change(fork: int, added: tuple[BlockOrdered, ...], final: int) -> None:
        final_hash = blocks[final - 1].hash if final else bytes(32)
        out.append(
            VirtualChainChanged(
                sequence=len(out) + 1,
                fork_index=fork,
                added=added,
                final_index=final,
                final_hash=final_hash,
                cause=added[0].cause if added else blocks[-1].cause,
            )
        )

    for block in blocks:
        n = block.chain_index
        if n % 4 == 0:
            stamp = 1_700_000_000_000 + n * 1000 + 500
            side = ordered(n, [t.raw for t in block.transactions[:5]], stamp)
            change(n - 1, (dataclasses.replace(side, hash=b"\xee" * 32),), max(0, n - 1 - depth))
        change(n - 1, (block,), max(0, n - depth))
    change(len(blocks), (), len(blocks))
    return out


def publish(bootstrap: str, blocks: list[BlockOrdered], *, twice: int = 0) -> None:
    """What a DAG processor sends: the final chain on the ordered topic, its virtual chain's
    changes (`twice`: the first so many sent twice, as two writers would)."""
    producer = Producer(bootstrap)
    for block in blocks:
        producer.send(ORDERED, block)
    changes = virtual(blocks)
    for change in [*changes[:twice], *changes]:
        producer.send(VIRTUAL, change)
    producer.close()


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as own:
        ensure_topics(own.bootstrap, TOPICS)
        yield own


def records(bootstrap: str, topic: str) -> list[Any]:
    reader = Reader(bootstrap)
    try:
        parts = reader.partitions(topic)
        return [reader.decode(m).event for m in reader.read(from_beginning(topic, parts))]
    finally:
        reader.close()


def start(bootstrap: str, data_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "execution",
            "run",
            "--kafka",
            bootstrap,
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(bootstrap: str, count: int, process: subprocess.Popen[bytes]) -> None:
    """Follow the executed topic live until `count` blocks are on it."""
    reader = Reader(bootstrap)
    reader.assign({(EXECUTED.name, 0): 0})
    deadline = time.monotonic() + 120
    seen = 0
    try:
        while seen < count:
            assert process.poll() is None, "the execution processor died"
            assert time.monotonic() < deadline, "the execution processor is stuck"
            message = reader.poll_raw(0.05)
            if message is not None and message.error() is None:
                seen += 1
    finally:
        reader.close()


def test_kill_9_and_restart_gives_the_uninterrupted_state(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    blocks = load()
    publish(broker.bootstrap, blocks)

    process = start(broker.bootstrap, tmp_path)
    wait_for(broker.bootstrap, 5, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_at_kill = len(records(broker.bootstrap, EXECUTED.name))
    assert done_at_kill < BLOCKS, "the kill came after the end: make the load heavier"
    process = start(broker.bootstrap, tmp_path)
    try:
        wait_for(broker.bootstrap, BLOCKS, process)
    finally:
        process.terminate()
        process.wait(30)

    executed = records(broker.bootstrap, EXECUTED.name)
    assert [b.number for b in executed] == list(range(1, BLOCKS + 1))
    receipts = Counter(r.transaction_hash for r in records(broker.bootstrap, RECEIPTS.name))
    assert len(receipts) == BLOCKS * len(KEYS) * PER_KEY
    assert set(receipts.values()) == {1}

    store = Store()
    ledger, _ = store.ledger()
    roots = [ledger.execute(block).header.state_root for block in blocks]
    assert [b.state_root for b in executed] == roots

    # Replaying the topics into a fresh store rebuilds the same state roots.
    report = replay(
        broker.bootstrap, tmp_path / "replay", dev_genesis(30_000_000), ChainRules(CHAIN_ID)
    )
    assert report.blocks == BLOCKS and report.mismatches == () and report.unpublished == 0
    assert report.head_root == roots[-1]
    # ...and a different genesis is caught at the first block.
    other = Genesis(
        dev_genesis(30_000_000).timestamp,
        30_000_000,
        {**dev_genesis(30_000_000).alloc, b"\x01" * 20: GenesisAccount(balance=1)},
    )
    wrong = replay(broker.bootstrap, tmp_path / "wrong", other, ChainRules(CHAIN_ID))
    assert wrong.mismatches[:1] == (1,)
    with pytest.raises(FileExistsError):
        replay(broker.bootstrap, tmp_path / "replay", dev_genesis(30_000_000), ChainRules(CHAIN_ID))


@pytest.mark.parametrize(
    ("point", "after"), [("before-commit", 2), ("mid-send", 300), ("before-acks", 0)]
)
def test_a_crash_anywhere_in_process_publishes_every_event_once(
    broker: EmbeddedBroker, tmp_path: Path, point: CrashPoint, after: int
) -> None:
    blocks = load()[:12]
    publish(broker.bootstrap, blocks)

    def processor() -> ExecutionProcessor:
        made = ExecutionProcessor(dev_genesis(30_000_000), ChainRules(CHAIN_ID))
        made.pace = dataclasses.replace(made.pace, batch=3)  # commits to fall between
        return made

    crash(processor(), RocksStore(tmp_path / "store"), broker.bootstrap, point, after)
    store = RocksStore(tmp_path / "store")
    run_to_end(processor(), store, broker.bootstrap)
    store.close()

    executed = records(broker.bootstrap, EXECUTED.name)
    assert [b.number for b in executed] == list(range(1, len(blocks) + 1))
    receipts = Counter(r.transaction_hash for r in records(broker.bootstrap, RECEIPTS.name))
    assert len(receipts) == len(blocks) * len(KEYS) * PER_KEY and set(receipts.values()) == {1}
    rejected = records(broker.bootstrap, REJECTED.name)
    assert len(rejected) == len({r.hash for r in rejected}) == len(blocks) // 7
    ledger, _ = Store().ledger()
    assert [b.state_root for b in executed] == [
        ledger.execute(block).header.state_root for block in blocks
    ]


def test_changes_sent_twice_are_applied_once(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Two writers of the virtual chain (a standby taking over from a member that was cut
    off, not dead) can put its changes on the log twice: each is applied once."""
    blocks = load()[:6]
    publish(broker.bootstrap, blocks, twice=4)
    store = RocksStore(tmp_path / "store")
    processor = ExecutionProcessor(dev_genesis(30_000_000), ChainRules(CHAIN_ID))
    run_to_end(processor, store, broker.bootstrap)
    store.close()
    executed = records(broker.bootstrap, EXECUTED.name)
    assert [b.number for b in executed] == list(range(1, len(blocks) + 1))
    ledger, _ = Store().ledger()
    assert [b.state_root for b in executed] == [
        ledger.execute(block).header.state_root for block in blocks
    ]
