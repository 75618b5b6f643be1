"""Pending transactions and the dev accounts, as JSON-RPC clients see them over a real
execution store: transactions the network accepted and no block holds yet (by hash, raw,
in the pending block and in geth's `txpool` views), and the node signing for its dev
accounts (messages, typed data, transactions filled as geth fills them)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_hash.auto import keccak
from web3 import Web3

from gateway.app import json_rpc_methods
from gateway.chainview import ChainView
from gateway.intake import TransactionIntake
from gateway.jsonrpc import JsonRpc, RpcError
from gateway.ledger import LedgerQueries
from processors.execution.genesis import DEV_ACCOUNTS, DEV_KEYS
from processors.execution.transactions import ChainRules, decode_transaction
from streams.settings import CHAIN_ID
from tests.gateway.test_chainview import KEY0, Execution, _NoSink
from tests.processors.execution.test_ledger import ordered

SENDER = DEV_ACCOUNTS[0]
DEST = "0x" + "44" * 20
MAIL = {
    "types": {
        "EIP712Domain": [
            {"name": "name", "type": "string"},
            {"name": "chainId", "type": "uint256"},
        ],
        "Mail": [{"name": "to", "type": "address"}, {"name": "contents", "type": "string"}],
    },
    "primaryType": "Mail",
    "domain": {"name": "Lattice", "chainId": CHAIN_ID},
    "message": {"to": DEST, "contents": "hello"},
}


class Node:
    """JSON-RPC as a devnet gateway serves it, over a store execution writes."""

    def __init__(self, tmp_path: Path) -> None:
        self.execution = Execution(tmp_path / "store")
        self.execution.block(1, to=DEST, value=1)  # nonce 0 used
        self.view = ChainView(tmp_path / "store", CHAIN_ID)
        self.ledger = LedgerQueries(self.view, block_gas_limit=30_000_000)
        self.intake = TransactionIntake(ChainRules(CHAIN_ID), _NoSink(), self.ledger)
        methods = json_rpc_methods(self.ledger, self.intake, chain_id=CHAIN_ID, dev_keys=DEV_KEYS)
        self.rpc = JsonRpc(methods)

    def __call__(self, method: str, *params: Any) -> Any:
        return asyncio.run(self.rpc.run(method, list(params)))

    def learn(self, nonce: int, value: int = 7) -> bytes:
        """A transfer the network accepted (as the pending view hands it on)."""
        tx = {
            "type": 2,
            "chainId": CHAIN_ID,
            "nonce": nonce,
            "to": DEST,
            "value": value,
            "gas": 21_000,
            "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9,
        }
        raw = bytes(Account.sign_transaction(tx, KEY0).raw_transaction)
        self.intake.learn(decode_transaction(raw, ChainRules(CHAIN_ID)))
        return raw


@pytest.fixture
def node(tmp_path: Path) -> Any:
    made = Node(tmp_path)
    yield made
    made.view.close()
    made.execution.state.close()


def test_accepted_transactions_are_pending_until_a_block_holds_them(node: Node) -> None:
    one, gapped = node.learn(1), node.learn(5)
    node.learn(2)
    assert node("eth_getRawTransactionByHash", tx_hash(one)) == "0x" + one.hex()
    seen = node("eth_getTransactionByHash", tx_hash(one))
    assert seen["blockNumber"] is None and seen["blockHash"] is None
    assert seen["nonce"] == "0x1" and seen["from"] == SENDER.lower()
    assert node("txpool_status") == {"pending": "0x2", "queued": "0x1"}
    content = node("txpool_content")
    assert sorted(content["pending"][SENDER]) == ["1", "2"]
    assert list(content["queued"][SENDER]) == ["5"]
    inspect = node("txpool_inspect")["pending"][SENDER]["1"]
    assert inspect == f"{Web3.to_checksum_address(DEST)}: 7 wei + 21000 gas \u00d7 10000000000 wei"
    pending = node("eth_getBlockByNumber", "pending", True)
    assert pending["number"] == "0x2" and pending["hash"] is None and pending["miner"] is None
    assert [t["nonce"] for t in pending["transactions"]] == ["0x1", "0x2"]
    assert int(pending["gasUsed"], 16) == 2 * 21_000
    assert node("eth_getBlockTransactionCountByNumber", "pending") == "0x2"
    assert node("eth_getTransactionByHash", tx_hash(gapped))["blockNumber"] is None

    node.execution.ledger.execute(ordered(2, [one]))  # `one` in a block now
    node.execution.commit()
    node.view.refresh()
    assert node("eth_getTransactionByHash", tx_hash(one))["blockNumber"] == "0x2"
    assert node("txpool_status") == {"pending": "0x1", "queued": "0x1"}
    assert node("eth_getRawTransactionByBlockNumberAndIndex", "0x2", "0x0") == "0x" + one.hex()


def tx_hash(raw: bytes) -> str:
    return "0x" + keccak(raw).hex()


def test_the_node_signs_messages_and_typed_data_for_its_accounts(node: Node) -> None:
    assert node("eth_accounts") == [a.lower() for a in DEV_ACCOUNTS]
    signature = node("eth_sign", SENDER, "0x" + b"hello".hex())
    message = encode_defunct(primitive=b"hello")
    assert Account.recover_message(message, signature=signature) == SENDER
    assert node("personal_sign", "0x" + b"hello".hex(), SENDER) == signature
    typed = node("eth_signTypedData_v4", SENDER, json.dumps(MAIL))
    assert Account.recover_message(encode_typed_data(full_message=MAIL), signature=typed) == SENDER
    assert node("eth_signTypedData_v4", SENDER, MAIL) == typed  # an object as well as text
    stranger = "0x" + "55" * 20
    with pytest.raises(RpcError) as unknown:
        node("eth_sign", stranger, "0x00")
    assert unknown.value.code == -32000 and "unknown account" in unknown.value.message
    with pytest.raises(RpcError) as malformed:
        node("eth_signTypedData_v4", SENDER, "{not json")
    assert malformed.value.code == -32602


def test_transactions_it_signs_are_filled_as_geth_fills_them(node: Node) -> None:
    node.learn(1)  # pending: the next nonce is 2
    raw = node("eth_signTransaction", {"from": SENDER, "to": DEST, "value": "0x5"})
    tx = decode_transaction(bytes.fromhex(raw[2:]), ChainRules(CHAIN_ID))
    assert (tx.sender, tx.nonce, tx.tx_type, tx.gas_limit) == (
        bytes.fromhex(SENDER[2:]),
        2,
        2,
        21_000,  # estimated
    )
    assert tx.max_priority_fee_per_gas == 10**9
    assert tx.max_fee_per_gas == 2 * node.ledger.next_base_fee() + 10**9
    legacy = node(
        "eth_signTransaction",
        {"from": SENDER, "to": DEST, "gasPrice": "0x3b9aca00", "gas": "0x7530", "nonce": "0x9"},
    )
    tx = decode_transaction(bytes.fromhex(legacy[2:]), ChainRules(CHAIN_ID))
    assert (tx.tx_type, tx.nonce, tx.gas_price, tx.gas_limit, tx.chain_id) == (
        0,
        9,
        10**9,
        30_000,
        CHAIN_ID,
    )
    lower = node("eth_signTransaction", {"from": SENDER, "to": "0x" + "ab" * 20, "gas": "0x5208"})
    assert decode_transaction(bytes.fromhex(lower[2:]), ChainRules(CHAIN_ID)).to == b"\xab" * 20
    for bad, code in (
        ({"to": DEST}, -32602),  # no sender
        ({"from": SENDER, "chainId": "0x1"}, -32602),
        ({"from": SENDER, "maxFeePerGas": "0x1", "maxPriorityFeePerGas": "0x2"}, -32602),
        ({"from": "0x" + "55" * 20, "to": DEST, "gas": "0x5208"}, -32000),
    ):
        with pytest.raises(RpcError) as refused:
            node("eth_signTransaction", bad)
        assert refused.value.code == code, bad
