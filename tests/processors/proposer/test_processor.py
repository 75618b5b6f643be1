"""A proposer under the runtime, on the real embedded broker: its blocks carry the
transactions in nonce order, a crash mid-send followed by a restart proposes nothing
twice (no block sequence used twice, no transaction in two blocks), and a crash before its
block reached the log loses no transaction (the group resumes from the oldest one not in
a block)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from coincurve import PrivateKey
from eth_hash.auto import keccak

from processors.dag.processor import PROPOSED
from processors.execution.transactions import ChainRules, decode_transaction, submitted_event
from processors.proposer.processor import TX_SUBMITTED, ProposerProcessor
from processors.runtime import Runtime
from processors.state import MemoryStore
from schemas.codec import default_codec
from schemas.events import BlockProposed
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer
from streams.settings import CHAIN_ID
from streams.topics import hex_key
from tests.processors.harness import Crash, read_all, run_while
from tests.txs import signed

pytestmark = pytest.mark.broker
KEY = PrivateKey(keccak(b"test proposer"))
RULES = ChainRules(CHAIN_ID)
TXS = 30


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, [PROPOSED, TX_SUBMITTED])
        yield broker


def submit(bootstrap: str, nonces: range) -> set[bytes]:
    producer = Producer(bootstrap)
    hashes = set()
    for nonce in nonces:
        tx = decode_transaction(signed(nonce=nonce), RULES)
        event = submitted_event(tx, 0, "test")
        producer.send(TX_SUBMITTED, event, key=hex_key(tx.sender))
        hashes.add(tx.hash)
    producer.close()
    return hashes


def blocks(bootstrap: str) -> list[BlockProposed]:
    codec = default_codec()
    return [codec.decode_as(raw, BlockProposed) for raw in read_all(bootstrap, PROPOSED.name)]


def included(bootstrap: str) -> list[bytes]:
    return [keccak(raw) for block in blocks(bootstrap) for raw in block.transactions]


def proposer(group: str) -> ProposerProcessor:
    return ProposerProcessor(
        KEY, chain_id=CHAIN_ID, interval_s=0.1, k=3, finality_depth=2, group_id=group
    )


def test_blocks_take_the_transactions_in_nonce_order(own_broker: EmbeddedBroker) -> None:
    hashes = submit(own_broker.bootstrap, range(TXS))
    runtime: Runtime[MemoryStore] = Runtime(proposer("p"), MemoryStore(), own_broker.bootstrap)
    run_while(runtime, lambda: set(included(own_broker.bootstrap)) >= hashes)
    assert sorted(included(own_broker.bootstrap)) == sorted(hashes)
    nonces = [
        decode_transaction(raw, RULES).nonce
        for block in blocks(own_broker.bootstrap)
        for raw in block.transactions
    ]
    assert nonces == sorted(nonces)


def test_a_crash_mid_send_proposes_nothing_twice(own_broker: EmbeddedBroker) -> None:
    submit(own_broker.bootstrap, range(TXS))
    crashing: Runtime[MemoryStore] = Runtime(proposer("q"), MemoryStore(), own_broker.bootstrap)
    send = crashing._send

    def dying_send(entry: Any) -> None:
        """Die sending the block after the first that carried transactions."""
        if included(own_broker.bootstrap):
            crashing.producer.flush()
            raise Crash
        send(entry)
        crashing.producer.flush()

    crashing._send = dying_send  # type: ignore[method-assign]
    run_while(crashing, lambda: False, timeout=60)
    assert included(own_broker.bootstrap), "the proposer never took a transaction"
    more = submit(own_broker.bootstrap, range(TXS, TXS + 10))
    restarted: Runtime[MemoryStore] = Runtime(proposer("q"), MemoryStore(), own_broker.bootstrap)
    run_while(restarted, lambda: set(included(own_broker.bootstrap)) >= more)
    assert set(included(own_broker.bootstrap)) >= more, "the restarted proposer took nothing"
    made = blocks(own_broker.bootstrap)
    assert len({b.sequence for b in made}) == len(made) and len(made) > 3
    assert len(set(included(own_broker.bootstrap))) == len(included(own_broker.bootstrap))


def test_a_crash_before_the_block_is_on_the_log_loses_no_transaction(
    own_broker: EmbeddedBroker,
) -> None:
    hashes = submit(own_broker.bootstrap, range(TXS))
    codec = default_codec()
    crashing: Runtime[MemoryStore] = Runtime(proposer("r"), MemoryStore(), own_broker.bootstrap)
    send = crashing._send
    taken: list[int] = []

    def dying_send(entry: Any) -> None:
        """Die instead of sending the first block that carries transactions."""
        carried = len(codec.decode_as(entry.value, BlockProposed).transactions)
        if carried:
            taken.append(carried)
            raise Crash
        send(entry)

    crashing._send = dying_send  # type: ignore[method-assign]
    failures = run_while(crashing, lambda: bool(taken), timeout=60)
    assert taken and any(isinstance(f, Crash) for f in failures), failures
    assert not included(own_broker.bootstrap)
    restarted: Runtime[MemoryStore] = Runtime(proposer("r"), MemoryStore(), own_broker.bootstrap)
    run_while(restarted, lambda: set(included(own_broker.bootstrap)) >= hashes)
    assert sorted(included(own_broker.bootstrap)) == sorted(hashes)
