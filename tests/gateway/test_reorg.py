"""A reorganisation of the optimistic head as JSON-RPC clients see it: the execution
processor (its own `apply`, into its own store) follows a virtual chain whose newest block
is replaced; the gateway's view, its block tags, receipts and filters follow."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from eth_account import Account

from gateway.chainview import ChainView
from processors.execution.genesis import dev_genesis
from processors.execution.processor import ExecutionProcessor
from processors.execution.transactions import ChainRules
from processors.state import RocksStore
from schemas.events import BlockOrdered, Position, VirtualChainChanged
from streams.settings import CHAIN_ID
from tests.gateway.test_chainview import KEY0, Rpc
from tests.processors.execution.test_ledger import ordered

CAUSE = Position(topic="lattice.blocks.virtual", partition=0, offset=0)


def logging_creation(nonce: int, word: int) -> bytes:
    """A contract creation whose init code logs one 32-byte word (LOG0) and stops."""
    init = f"60{word:02x}60005260206000a000"
    tx = {
        "type": 2,
        "chainId": CHAIN_ID,
        "nonce": nonce,
        "gas": 100_000,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 10**9,
        "to": "",
        "data": "0x" + init,
    }
    return bytes(Account.sign_transaction(tx, KEY0).raw_transaction)


def block(n: int, raw: bytes, tag: int) -> BlockOrdered:
    """Chain block `n` carrying one transaction; `tag` tells blocks at one height apart."""
    return dataclasses.replace(ordered(n, [raw]), hash=bytes([tag]) * 32)


def change(sequence: int, fork: int, added: list[BlockOrdered], final: int) -> VirtualChainChanged:
    return VirtualChainChanged(
        sequence=sequence,
        fork_index=fork,
        added=tuple(added),
        final_index=final,
        final_hash=bytes(32),
        cause=CAUSE,
    )


def word(entry: dict[str, Any]) -> int:
    return int(entry["data"], 16)


def test_a_replaced_block_leaves_the_head_its_receipts_and_filters(tmp_path: Path) -> None:
    store = RocksStore(tmp_path / "store")
    processor = ExecutionProcessor(dev_genesis(30_000_000), ChainRules(CHAIN_ID))
    processor.restore(store)
    store.commit({})

    def apply(c: VirtualChainChanged) -> None:
        processor.apply(c, CAUSE, store)
        store.commit({})
        view.refresh()

    a, b, c, d = (logging_creation(n, w) for n, w in ((0, 0xA), (1, 0xB), (1, 0xC), (2, 0xD)))
    view = ChainView(tmp_path / "store", CHAIN_ID)
    rpc = Rpc(view)
    apply(change(1, 0, [block(1, a, 1)], 0))
    logs, heads = rpc("eth_newFilter", {"fromBlock": "0x1"}), rpc("eth_newBlockFilter")
    assert [word(e) for e in rpc("eth_getFilterChanges", logs)] == [0xA]

    apply(change(2, 1, [block(2, b, 0xAA)], 1))
    side = rpc("eth_getBlockByNumber", "latest", False)
    assert [(word(e), e["removed"]) for e in rpc("eth_getFilterChanges", logs)] == [(0xB, False)]
    assert rpc("eth_getFilterChanges", heads) == [side["hash"]]
    b_hash = side["transactions"][0]
    assert rpc("eth_getTransactionReceipt", b_hash)["blockHash"] == side["hash"]
    assert int(rpc("eth_getBlockByNumber", "safe", False)["number"], 16) == 1

    # A heavier branch replaces block 2 and adds 3; 2 becomes final.
    apply(change(3, 1, [block(2, c, 0xBB), block(3, d, 3)], 2))
    two, three = (rpc("eth_getBlockByNumber", hex(n), False) for n in (2, 3))
    assert two["hash"] != side["hash"]
    assert rpc("eth_getBlockByNumber", "latest", False)["hash"] == three["hash"]
    assert rpc("eth_getBlockByNumber", "safe", False)["hash"] == two["hash"]
    news = rpc("eth_getFilterChanges", logs)
    assert [(word(e), e["removed"]) for e in news] == [(0xB, True), (0xC, False), (0xD, False)]
    assert news[0]["blockHash"] == side["hash"]
    assert rpc("eth_getFilterChanges", heads) == [two["hash"], three["hash"]]
    assert rpc("eth_getTransactionReceipt", b_hash) is None
    assert rpc("eth_getTransactionByHash", b_hash) is None
    assert rpc("eth_getBlockByHash", side["hash"], False)["number"] == "0x2"  # kept by hash
    sender = Account.from_key(KEY0).address
    assert rpc("eth_getTransactionCount", sender, "latest") == "0x3"  # A, C, D: not B
    assert rpc("eth_getTransactionCount", sender, "safe") == "0x2"
    view.close()
    store.close()


def test_a_filter_reports_nothing_of_blocks_below_its_start(tmp_path: Path) -> None:
    """A reorganisation that replaces blocks below a filter's fromBlock: none of their
    logs comes back as removed, and none of the new ones below fromBlock is reported."""
    store = RocksStore(tmp_path / "store")
    processor = ExecutionProcessor(dev_genesis(30_000_000), ChainRules(CHAIN_ID))
    processor.restore(store)
    store.commit({})
    view = ChainView(tmp_path / "store", CHAIN_ID)
    rpc = Rpc(view)

    def apply(c: VirtualChainChanged) -> None:
        processor.apply(c, CAUSE, store)
        store.commit({})
        view.refresh()

    a, b = logging_creation(0, 0xA), logging_creation(1, 0xB)
    c, d, e = logging_creation(0, 0xC), logging_creation(1, 0xD), logging_creation(2, 0xE)
    apply(change(1, 0, [block(1, a, 1)], 0))
    apply(change(2, 1, [block(2, b, 2)], 0))
    logs = rpc("eth_newFilter", {"fromBlock": "0x2"})
    apply(change(3, 0, [block(1, c, 3), block(2, d, 4), block(3, e, 5)], 1))
    news = rpc("eth_getFilterChanges", logs)
    assert [(word(x), x["removed"]) for x in news] == [(0xD, False), (0xE, False)]
    view.close()
    store.close()
