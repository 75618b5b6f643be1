"""The execution processor's own speed on a pre-filled `lattice.blocks.virtual` topic.

    .venv/bin/python bench/bench_execution.py [--blocks 20] [--per-block 250]

Fills an embedded broker's ordered topic with blocks of signed ETH transfers from the dev
accounts, then runs the real ExecutionProcessor under the processor runtime (read from the
broker, py-evm, rocksdict commits, events sent and acknowledged) over it until it has caught
up, and reports transactions per second. Beside it, the same blocks
through the bare Ledger on an in-memory store: the cost of the processor's shell.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

from eth_account import Account

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from processors.execution.db import overlay_chain_db
from processors.execution.genesis import dev_genesis
from processors.execution.ledger import Ledger
from processors.execution.processor import VIRTUAL, ExecutionProcessor, final_changes
from processors.execution.transactions import ChainRules
from processors.runtime import Runtime
from processors.state import RocksStore
from schemas.events import BlockOrdered, OrderedTransaction, Position
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer
from streams.settings import CHAIN_ID
from streams.topics import TOPICS

KEYS = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
]


def blocks(count: int, per_block: int) -> list[BlockOrdered]:
    nonces = [0] * len(KEYS)
    out = []
    for n in range(1, count + 1):
        txs = []
        for i in range(per_block):
            k = i % len(KEYS)
            tx = {
                "type": 2,
                "chainId": CHAIN_ID,
                "nonce": nonces[k],
                "to": "0x" + "22" * 20,
                "value": 1,
                "gas": 21_000,
                "maxFeePerGas": 10**11,
                "maxPriorityFeePerGas": 1,
            }
            raw = bytes(Account.sign_transaction(tx, KEYS[k]).raw_transaction)
            nonces[k] += 1
            txs.append(
                OrderedTransaction(
                    hash=b"\0" * 32, raw=raw, dag_block=n.to_bytes(32, "big"), index_in_block=i
                )
            )
        out.append(
            BlockOrdered(
                chain_index=n,
                hash=n.to_bytes(32, "big"),
                blue_score=n,
                blue_work=n,
                timestamp_ms=1_700_000_000_000 + n * 1000,
                proposer=b"\x99" * 20,
                mergeset_blues=(),
                mergeset_reds=(),
                transactions=tuple(txs),
                cause=Position(topic="lattice.blocks.proposed", partition=0, offset=n),
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--per-block", type=int, default=250)
    args = parser.parse_args()
    print(f"signing {args.blocks * args.per_block:,} transfers...", flush=True)
    load = blocks(args.blocks, args.per_block)
    total = args.blocks * args.per_block
    rules = ChainRules(CHAIN_ID)

    store: dict[bytes, bytes] = {}
    db, _ = overlay_chain_db(store.get)
    ledger = Ledger(db, dev_genesis(30_000_000), rules)
    start = time.perf_counter()
    for block in load:
        ledger.execute(block)
    bare = total / (time.perf_counter() - start)

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        ensure_topics(broker.bootstrap, TOPICS)
        producer = Producer(broker.bootstrap)
        for change in final_changes(load):  # each block final as it comes
            producer.send(VIRTUAL, change)
        producer.close()
        rocks = RocksStore(Path(tmp))
        processor = ExecutionProcessor(dev_genesis(30_000_000), rules)
        runtime = Runtime(processor, rocks, broker.bootstrap)
        runtime.open()
        start = time.perf_counter()
        runtime.run(threading.Event(), until_caught_up=True)
        shell = total / (time.perf_counter() - start)
        rocks.close()
    print(f"  bare Ledger (py-evm, memory store)        {bare:>8,.0f} tx/s")
    print(f"  ExecutionProcessor (rocksdict + events)   {shell:>8,.0f} tx/s   x{shell / bare:.2f}")


if __name__ == "__main__":
    main()
