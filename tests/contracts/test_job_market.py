"""JobMarket and ModelRegistry as the genesis deploys them, executed by the real ledger."""

from __future__ import annotations

import dataclasses
from typing import Any

from eth_hash.auto import keccak

from processors.execution.genesis import (
    DEV_KEYS,
    ETHER,
    JOB_MARKET,
    MODEL_REGISTRY,
    UNBONDING_SECONDS,
    address_of,
    devnet_key,
)
from processors.execution.ledger import BlockResult
from processors.execution.receipts import succeeded
from processors.market import chain
from streams.settings import CHAIN_ID
from tests.processors.execution.test_ledger import Store, ordered

USER = bytes.fromhex(DEV_KEYS[0][2:])
PROVIDER = devnet_key("worker", 3)
SETTLER = devnet_key("settler")
DELEGATE = b"\x42" * 32
STRANGER = bytes.fromhex(DEV_KEYS[5][2:])


class Chain:
    def __init__(self) -> None:
        self.store = Store()
        self.ledger, self.overlay = self.store.ledger()
        self.nonces: dict[bytes, int] = {}
        self.height = 0
        self.later_ms = 0  # how far `wait` moved the blocks' clock ahead

    def send(self, key: bytes, to: bytes, data: bytes, value: int = 0) -> Any:
        nonce = self.nonces.get(key, 0)
        self.nonces[key] = nonce + 1
        raw = chain.signed_call(key, CHAIN_ID, nonce, to, data, value=value)
        self.height += 1
        block = ordered(self.height, [raw])
        block = dataclasses.replace(block, timestamp_ms=block.timestamp_ms + self.later_ms)
        result: BlockResult = self.ledger.execute(block)
        self.store.commit(self.overlay)
        assert not result.rejected, result.rejected
        return result.included[0].receipt

    def wait(self, seconds: int) -> None:
        self.later_ms += seconds * 1000

    def balance(self, key: bytes) -> int:
        return self.balance_of(address_of(key))

    def balance_of(self, address: bytes) -> int:
        return self.ledger.account(address).balance

    def slot(self, to: bytes, slot: int, key: bytes | None = None) -> int:
        """A storage word: a plain variable, or a mapping entry (Solidity's layout)."""
        if key is not None:
            slot = int.from_bytes(keccak(key.rjust(32, b"\0") + slot.to_bytes(32)))
        return int(self.ledger.chain.get_vm().state.get_storage(to, slot))


# JobMarket's layout: settler, treasury, minStake, deposits, delegateOf, stakes, ...
DEPOSITS, STAKES, FEES, UNBONDING_UNTIL = 3, 5, 8, 9


def ok(receipt: Any) -> bool:
    return succeeded(receipt)


def settle(
    c: Chain, job: bytes, signer: bytes, paid: int, fee: int, slash: int = 0, key: bytes = SETTLER
) -> Any:
    data = chain.settle_call(
        job, address_of(signer), address_of(USER), address_of(PROVIDER), paid, fee, 0, slash
    )
    return c.send(key, chain.JOB_MARKET, data)


def test_deposit_delegate_settle_once() -> None:
    c = Chain()
    assert ok(c.send(USER, JOB_MARKET, chain.deposit_call(), value=10 * ETHER))
    assert ok(c.send(USER, JOB_MARKET, chain.authorise_call(address_of(DELEGATE))))
    before = c.balance(PROVIDER)
    receipt = settle(c, b"\x01" * 32, DELEGATE, paid=9 * 10**9, fee=10**9)
    assert ok(receipt) and c.balance(PROVIDER) == before + 9 * 10**9
    assert receipt.logs[0].topics[0] == int.from_bytes(chain.SETTLED)
    assert c.slot(JOB_MARKET, DEPOSITS, address_of(USER)) == 10 * ETHER - 10**10
    # The same job again, a stranger settling, a signer the user never authorised: reverted.
    assert not ok(settle(c, b"\x01" * 32, DELEGATE, paid=1, fee=0))
    assert not ok(settle(c, b"\x02" * 32, DELEGATE, paid=1, fee=0, key=STRANGER))
    assert not ok(settle(c, b"\x03" * 32, b"\x43" * 32, paid=1, fee=0))
    assert c.balance(PROVIDER) == before + 9 * 10**9


def test_charges_are_capped_by_the_deposit_and_stakes_are_slashed() -> None:
    c = Chain()
    c.send(USER, JOB_MARKET, chain.deposit_call(), value=1_000)
    assert not ok(c.send(PROVIDER, JOB_MARKET, chain.register_node_call(5), value=ETHER // 2))
    assert ok(c.send(PROVIDER, JOB_MARKET, chain.register_node_call(5), value=2 * ETHER))
    before = c.balance(PROVIDER)
    assert ok(settle(c, b"\x04" * 32, USER, paid=9_000, fee=1_000))
    assert c.balance(PROVIDER) == before + 900  # 1000 available: the fee keeps its 10%
    assert ok(settle(c, b"\x05" * 32, USER, paid=0, fee=0, slash=ETHER))
    assert c.slot(JOB_MARKET, STAKES, address_of(PROVIDER)) == ETHER
    assert c.slot(JOB_MARKET, FEES) == ETHER + 100


def test_model_registry_owns_names_and_counts_versions() -> None:
    c = Chain()
    first = c.send(USER, MODEL_REGISTRY, chain.register_model_call("m", "bafk1", "gpt2"))
    second = c.send(USER, MODEL_REGISTRY, chain.register_model_call("m", "bafk2", "gpt2"))
    assert ok(first) and ok(second)
    assert chain.decode_model_registered(second.logs[0].data) == ("m", "bafk2", 2, "gpt2")
    assert not ok(c.send(PROVIDER, MODEL_REGISTRY, chain.register_model_call("m", "x", "gpt2")))


def test_a_node_leaves_after_the_unbonding_period_and_can_be_slashed_until_then() -> None:
    c = Chain()
    node = address_of(PROVIDER)
    assert not ok(c.send(PROVIDER, JOB_MARKET, chain.request_unstake_call()))  # nothing staked
    assert ok(c.send(PROVIDER, JOB_MARKET, chain.register_node_call(5), value=3 * ETHER))
    assert not ok(c.send(PROVIDER, JOB_MARKET, chain.withdraw_stake_call()))  # not leaving
    asked = c.send(PROVIDER, JOB_MARKET, chain.request_unstake_call())
    assert ok(asked)
    until = c.slot(JOB_MARKET, UNBONDING_UNTIL, node)
    assert int.from_bytes(asked.logs[0].data[32:]) == until
    c.wait(UNBONDING_SECONDS - 10)
    assert not ok(c.send(PROVIDER, JOB_MARKET, chain.withdraw_stake_call()))  # too early
    # Still slashable for what it did before leaving.
    assert ok(settle(c, b"\x06" * 32, USER, paid=0, fee=0, slash=ETHER))
    c.wait(10)
    held = c.balance_of(JOB_MARKET)
    out = c.send(PROVIDER, JOB_MARKET, chain.withdraw_stake_call())
    assert ok(out)
    assert int.from_bytes(out.logs[0].data) == 2 * ETHER
    assert c.balance_of(JOB_MARKET) == held - 2 * ETHER
    assert c.slot(JOB_MARKET, STAKES, node) == c.slot(JOB_MARKET, UNBONDING_UNTIL, node) == 0
    assert not ok(c.send(PROVIDER, JOB_MARKET, chain.withdraw_stake_call()))  # nothing left


def test_registering_again_cancels_leaving() -> None:
    c = Chain()
    node = address_of(PROVIDER)
    assert ok(c.send(PROVIDER, JOB_MARKET, chain.register_node_call(5), value=2 * ETHER))
    assert ok(c.send(PROVIDER, JOB_MARKET, chain.request_unstake_call()))
    assert ok(c.send(PROVIDER, JOB_MARKET, chain.register_node_call(5)))
    assert c.slot(JOB_MARKET, UNBONDING_UNTIL, node) == 0
    c.wait(UNBONDING_SECONDS + 1)
    assert not ok(c.send(PROVIDER, JOB_MARKET, chain.withdraw_stake_call()))
    assert c.slot(JOB_MARKET, STAKES, node) == 2 * ETHER
