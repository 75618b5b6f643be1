from __future__ import annotations

from typing import Any

import pytest
from eth.db.trie import make_trie_root_and_nodes
from eth_account import Account
from eth_hash.auto import keccak
from eth_typing import BlockNumber

from processors.execution.db import overlay_chain_db
from processors.execution.genesis import (
    DEV_ACCOUNTS,
    DEV_MNEMONIC,
    ETHER,
    GenesisError,
    dev_genesis,
    load_genesis,
)
from processors.execution.ledger import Ledger
from processors.execution.transactions import ChainRules
from schemas.events import BlockOrdered, OrderedTransaction, Position
from streams.settings import CHAIN_ID

RULES = ChainRules(CHAIN_ID)
KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ADDR0 = bytes.fromhex(DEV_ACCOUNTS[0][2:])
DEST = bytes.fromhex("22" * 20)
PROPOSER = bytes.fromhex("99" * 20)


def transfer(nonce: int, value: int = 5, key: str = KEY0, **kw: Any) -> bytes:
    tx = {
        "type": 2,
        "nonce": nonce,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 10**9,
        "gas": 21_000,
        "to": "0x" + DEST.hex(),
        "value": value,
        "chainId": CHAIN_ID,
    }
    tx.update(kw)
    return bytes(Account.sign_transaction(tx, key).raw_transaction)


def ordered(n: int, raws: list[bytes], timestamp_ms: int | None = None) -> BlockOrdered:
    """Chain block number `n` carrying `raws` from one DAG block."""
    return BlockOrdered(
        chain_index=n,
        hash=n.to_bytes(32, "big"),
        blue_score=n,
        blue_work=n,
        timestamp_ms=1_700_000_000_000 + n * 1000 if timestamp_ms is None else timestamp_ms,
        proposer=PROPOSER,
        mergeset_blues=(),
        mergeset_reds=(),
        transactions=tuple(
            OrderedTransaction(
                hash=keccak(r), raw=r, dag_block=n.to_bytes(32, "big"), index_in_block=i
            )
            for i, r in enumerate(raws)
        ),
        cause=Position(topic="lattice.blocks.proposed", partition=0, offset=n),
    )


class Store:
    """A dict standing in for the processor's store (this is a pure-core test)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def ledger(self, gas_limit: int = 30_000_000) -> tuple[Ledger, Any]:
        db, overlay = overlay_chain_db(self.data.get)
        ledger = Ledger(db, dev_genesis(gas_limit), RULES)
        self.commit(overlay)
        return ledger, overlay

    def commit(self, overlay: Any) -> None:
        for key, value in overlay.take_changes().items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


def test_dev_accounts_are_the_mnemonic_derivations() -> None:
    Account.enable_unaudited_hdwallet_features()
    for i, address in enumerate(DEV_ACCOUNTS):
        derived = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        assert derived.address == address


def test_genesis_funds_the_dev_accounts() -> None:
    ledger, _ = Store().ledger()
    assert ledger.head.block_number == 0
    for address in DEV_ACCOUNTS:
        assert ledger.account(bytes.fromhex(address[2:])).balance == 10_000 * ETHER


def test_transfers_and_every_rejection_reason() -> None:
    ledger, _ = Store().ledger()
    poor = "0x" + "77" * 32
    raws = [
        transfer(0),
        transfer(1),
        transfer(0),  # same bytes again: already executed
        transfer(0, value=6),  # new tx, stale nonce
        transfer(5),  # gap
        transfer(0, key=poor),  # no funds
        transfer(2, maxFeePerGas=1, maxPriorityFeePerGas=1),  # below the base fee
    ]
    result = ledger.execute(ordered(1, raws))
    assert [i.tx.nonce for i in result.included] == [0, 1]
    assert [r.code for r in result.rejected] == [
        "already_executed",
        "nonce_too_low",
        "nonce_too_high",
        "insufficient_funds",
        "fee_below_base_fee",
    ]
    assert ledger.account(DEST).balance == 10
    assert ledger.account(ADDR0).nonce == 2
    # Priority fees went to the chain block's proposer.
    assert ledger.account(PROPOSER).balance == 2 * 21_000 * 10**9
    # The stored block reads back through py-evm, its tries as py-evm itself builds them.
    block = ledger.chain.get_canonical_block_by_number(BlockNumber(1))
    assert [bytes(t.hash) for t in block.transactions] == [i.tx.hash for i in result.included]
    assert make_trie_root_and_nodes(block.transactions)[0] == result.header.transaction_root
    receipts = block.get_receipts(ledger.chain.chaindb)
    assert make_trie_root_and_nodes(receipts)[0] == result.header.receipt_root
    # A transaction executed in an earlier block is recognised as such.
    again = ledger.execute(ordered(2, [transfer(0)]))
    assert [r.code for r in again.rejected] == ["already_executed"]


def test_same_input_same_state_roots_and_restart_from_the_store() -> None:
    blocks = [ordered(n, [transfer(2 * n - 2), transfer(2 * n - 1)]) for n in range(1, 6)]
    one, _ = Store().ledger()
    roots = [one.execute(b).header.state_root for b in blocks]
    store = Store()
    two, overlay = store.ledger()
    for block in blocks[:3]:
        two.execute(block)
        store.commit(overlay)
    resumed, overlay = store.ledger()  # a new process over the committed store
    assert resumed.head.block_number == 3
    later = [resumed.execute(b).header.state_root for b in blocks[3:]]
    assert later == roots[3:]
    assert len(set(roots)) == 5


def test_the_ledger_keeps_the_dag_clock_and_never_goes_back() -> None:
    ledger, _ = Store().ledger()
    at = [1_800_000_000_000, 1_800_000_000_250, 1_800_000_000_999, 1_800_000_001_000]
    at += [1_799_999_999_000, 1_800_000_005_400]  # a chain block stamped earlier, then later
    stamps = []
    for n, ms in enumerate(at, start=1):
        block = ordered(n, [], timestamp_ms=ms)
        stamps.append(ledger.execute(block).header.timestamp)
    assert stamps == [1_800_000_000] * 3 + [1_800_000_001] * 2 + [1_800_000_005]


def test_empty_blocks_keep_the_genesis_gas_limit() -> None:
    # py-evm's default rule shrank it by 1/1024 per empty block (22M after these 300).
    ledger, _ = Store().ledger(gas_limit=30_000_000)
    limits = {ledger.execute(ordered(n, [])).header.gas_limit for n in range(1, 301)}
    assert limits == {30_000_000}
    whole = ledger.execute(ordered(301, [transfer(0, gas=30_000_000)]))
    assert [i.tx.nonce for i in whole.included] == [0]
    assert ledger.chain.create_header_from_parent(ledger.head).gas_limit == 30_000_000


def test_a_full_block_carries_the_rest_over_in_order_across_restarts() -> None:
    key1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
    store = Store()
    ledger, overlay = store.ledger(gas_limit=50_000)  # room for two transfers
    first = ledger.execute(
        ordered(1, [transfer(0), transfer(1), transfer(2), transfer(0, key=key1)])
    )
    assert [i.tx.nonce for i in first.included] == [0, 1]
    assert first.rejected == () and first.carried == 2
    store.commit(overlay)
    resumed, overlay = store.ledger(gas_limit=50_000)  # a restart in between
    second = resumed.execute(ordered(2, [transfer(3)]))
    # The carried ones go first, in their order; the new one waits behind them.
    assert [(i.tx.sender, i.tx.nonce) for i in second.included] == [
        (ADDR0, 2),
        (bytes.fromhex(DEV_ACCOUNTS[1][2:]), 0),
    ]
    assert second.carried == 1
    third = resumed.execute(ordered(3, []))
    assert [i.tx.nonce for i in third.included] == [3] and third.carried == 0
    # What no block could ever hold is refused rather than carried forever.
    fourth = resumed.execute(ordered(4, [transfer(4, gas=60_000)]))
    assert [r.code for r in fourth.rejected] == ["block_gas_exhausted"]
    assert fourth.carried == 0 and resumed.carried() == []


def test_contract_creation_and_logs() -> None:
    ledger, _ = Store().ledger()
    # Init code: LOG1(0, 0, topic 0x2a), then return empty runtime code.
    init = bytes.fromhex("602a60006000a160006000f3")
    raw = transfer(0, value=0, to=b"", data=init, gas=100_000)
    result = ledger.execute(ordered(1, [raw]))
    (item,) = result.included
    (receipt,) = result.receipts
    assert receipt.contract_address is not None and receipt.to_address is None
    assert item.receipt.logs[0].topics == (0x2A,)
    assert receipt.logs[0].topics == ((0x2A).to_bytes(32, "big"),) and receipt.status == 1


def test_genesis_files(tmp_path: Any) -> None:
    path = tmp_path / "genesis.json"
    path.write_text('{"alloc": {"0x' + "11" * 20 + '": {"balance": "0x10", "nonce": 1}}}')
    genesis = load_genesis(path, 30_000_000)
    assert genesis.alloc[b"\x11" * 20].balance == 16
    path.write_text('{"alloc": {"0x12": {}}}')
    with pytest.raises(GenesisError, match="20-byte"):
        load_genesis(path, 30_000_000)
    with pytest.raises(GenesisError, match="cannot read"):
        load_genesis(tmp_path / "none.json", 1)


def test_a_rewound_ledger_builds_what_one_that_never_saw_the_dropped_blocks_builds() -> None:
    """A reorganisation: two blocks of one branch (one full, carrying a transaction over)
    are dropped and another branch executed on the fork point. Everything matches a ledger
    that only ever saw the second branch: blocks, state roots, which transactions count as
    executed, the carried list, and the canonical lookups, also after a restart."""
    from eth.exceptions import TransactionNotFound

    common = [ordered(1, [transfer(0)]), ordered(2, [transfer(1)])]
    dropped = [ordered(3, [transfer(2), transfer(3), transfer(4)]), ordered(4, [])]
    kept = [ordered(3, [transfer(2)], 1_700_000_003_500), ordered(4, [transfer(3)])]
    store = Store()
    ledger, overlay = store.ledger(gas_limit=50_000)  # room for two transfers a block
    for block in common:
        ledger.execute(block)
    side = [ledger.execute(block) for block in dropped]
    assert side[0].carried == 1 and [i.tx.nonce for i in side[1].included] == [4]
    ledger.rewind(2)
    assert ledger.head.block_number == 2 and ledger.carried() == []
    with pytest.raises(TransactionNotFound):
        ledger.chain.chaindb.get_transaction_index(side[1].included[0].tx.hash)
    mine = [ledger.execute(block).header for block in kept]
    store.commit(overlay)

    reference, _ = Store().ledger(gas_limit=50_000)
    theirs = [reference.execute(block).header for block in [*common, *kept]][2:]
    assert [h.hash for h in mine] == [h.hash for h in theirs]
    assert mine[0].hash != side[0].header.hash
    resumed, _ = store.ledger(gas_limit=50_000)  # a new process over the committed store
    assert resumed.head == theirs[-1] and resumed.carried() == []
    chaindb = resumed.chain.chaindb
    for header in theirs:
        assert chaindb.get_canonical_block_hash(header.block_number) == header.hash
    assert chaindb.get_transaction_index(keccak(transfer(3))) == (4, 0)
    assert resumed.chain.get_block_by_hash(side[1].header.hash).number == 4  # kept by hash
    assert [r.code for r in resumed.execute(ordered(5, [transfer(4)])).rejected] == []
    with pytest.raises(ValueError, match="cannot rewind"):
        resumed.rewind(6)


def test_a_set_code_transaction_delegates_an_account_to_a_contracts_code() -> None:
    """EIP-7702 through py-evm's Prague: the authority's code becomes the delegation
    designator, and a call to it runs the delegate's code on the authority's storage."""
    from eth_typing import Address

    from tests.gateway.test_chainview import DEPLOY_COUNTER

    key1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
    authority = bytes.fromhex(DEV_ACCOUNTS[1][2:])
    ledger, _ = Store().ledger()
    deploy = transfer(0, value=0, to="", data="0x" + DEPLOY_COUNTER, gas=200_000)
    counter = ledger.execute(ordered(1, [deploy])).receipts[0].contract_address
    assert counter is not None
    signed = Account.sign_authorization(
        {"chainId": CHAIN_ID, "address": "0x" + counter.hex(), "nonce": 0}, key1
    )
    set_code = transfer(
        1, value=0, type=4, to=DEV_ACCOUNTS[1], gas=100_000, authorizationList=[signed]
    )
    result = ledger.execute(ordered(2, [set_code]))
    assert [i.tx.tx_type for i in result.included] == [4] and result.receipts[0].status == 1
    state = ledger.chain.get_vm().state
    assert state.get_code(Address(authority)) == b"\xef\x01\x00" + counter
    assert state.get_storage(Address(authority), 0) == 1  # the counter ran as the authority
    assert state.get_storage(Address(counter), 0) == 0
    assert ledger.account(authority).nonce == 1  # the authorization took nonce 0


def test_a_store_from_before_keeps_its_heads_carried_transactions() -> None:
    """Stores kept the head's carried list under one key before lists were kept per
    block: opening one moves it to its head, so the next block still takes them."""
    import rlp

    store = Store()
    ledger, overlay = store.ledger()
    ledger.execute(ordered(1, []))
    store.commit(overlay)
    waiting = [[transfer(0), (1).to_bytes(32, "big")]]
    store.data[b"lattice/carried"] = rlp.encode(waiting)
    reopened, overlay = store.ledger()
    assert reopened.carried() == [(transfer(0), (1).to_bytes(32, "big"))]
    assert [i.tx.nonce for i in reopened.execute(ordered(2, [])).included] == [0]
    store.commit(overlay)
    assert b"lattice/carried" not in store.data
