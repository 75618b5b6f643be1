"""A proposer never lets a sender's later nonce into a block that could be ordered before
the block carrying its earlier ones (the processor's pure handling, no broker): a block
built while its previous one is not read back yet is that block's sibling, so it takes
nothing from the senders in flight."""

from __future__ import annotations

from coincurve import PrivateKey
from eth_hash.auto import keccak

from processors.dag.processor import PROPOSED
from processors.execution.transactions import ChainRules, decode_transaction, submitted_event
from processors.proposer.processor import TX_SUBMITTED, ProposerProcessor
from schemas.events import BlockProposed
from streams.kafka import Record
from streams.settings import CHAIN_ID
from tests.txs import KEY, signed

RULES = ChainRules(CHAIN_ID)
OTHER = "0x" + keccak(b"another sender").hex()


def offer(proposer: ProposerProcessor, nonce: int, key: str = KEY) -> bytes:
    tx = decode_transaction(signed(nonce=nonce, key=key), RULES)
    proposer.on_transaction(submitted_event(tx, 0, "test"), (TX_SUBMITTED.name, 0), nonce)
    return tx.hash


def read_back(proposer: ProposerProcessor, block: BlockProposed, offset: int) -> None:
    record = Record(PROPOSED.name, 0, offset, block.timestamp_ms, None, block, b"")
    proposer.on_block(record, block)


def hashes(block: BlockProposed) -> list[bytes]:
    return [keccak(raw) for raw in block.transactions]


def test_a_sender_in_a_block_not_read_back_waits_for_it() -> None:
    proposer = ProposerProcessor(PrivateKey(keccak(b"p")), chain_id=CHAIN_ID, k=3)
    first = offer(proposer, 0)
    b0 = proposer.propose(1_000)
    assert hashes(b0) == [first]
    second, other = offer(proposer, 1), offer(proposer, 0, key=OTHER)
    b1 = proposer.propose(2_000)  # b0 not read back: b1 would be its sibling
    assert hashes(b1) == [other]
    read_back(proposer, b0, 0)
    read_back(proposer, b1, 1)
    b2 = proposer.propose(3_000)
    assert hashes(b2) == [second]
    assert b0.hash in b2.parents or b1.hash in b2.parents
