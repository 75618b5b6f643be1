"""A node's stake on the ledger, through a gateway's JSON-RPC: read it, leave the market,
take the stake back (`lattice worker status | unstake | withdraw-stake`)."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from processors.execution.genesis import JOB_MARKET, address_of
from processors.market.chain import (
    price_call,
    request_unstake_call,
    stakes_call,
    unbonding_until_call,
    withdraw_stake_call,
)
from processors.market.client import RpcFailure, rpc_call, send_call, wait_for_ledger


def market_uint(rpc: str, data: bytes) -> int:
    """A uint256 read from `JobMarket` at the latest block."""
    call = {"to": "0x" + JOB_MARKET.hex(), "data": "0x" + data.hex()}
    return int(rpc_call(rpc, "eth_call", [call, "latest"]), 16)


def leave(rpc: str, chain_id: int, key: bytes) -> tuple[int, int]:
    """Take a node out of the market: `requestUnstake` on the ledger, after which the
    matcher (which reads stakes from the ledger's receipts) offers it nothing. Returns the
    stake and when it becomes withdrawable (unix seconds). Refuses (nothing sent) when the
    node has nothing staked. A worker started again rejoins: its `registerNode` cancels it."""
    node = address_of(key)
    wait_for_ledger(rpc)
    stake = market_uint(rpc, stakes_call(node))
    if stake == 0:
        raise RpcFailure(f"node 0x{node.hex()} has nothing staked")
    send_call(rpc, chain_id, key, JOB_MARKET, request_unstake_call(), gas=100_000)
    return stake, market_uint(rpc, unbonding_until_call(node))


def node_status(rpc: str, node: bytes) -> dict[str, Any]:
    """What the ledger and the market say of a node: stake, price, leaving, and the
    market's view of it (`/v1/nodes`: reputation, verdicts, last seen) when listed."""
    wait_for_ledger(rpc)
    until = market_uint(rpc, unbonding_until_call(node))
    status: dict[str, Any] = {
        "node": "0x" + node.hex(),
        "stake_wei": market_uint(rpc, stakes_call(node)),
        "price_wei_per_hour": market_uint(rpc, price_call(node)),
        "withdrawable_at": until or None,
    }
    try:
        with urllib.request.urlopen(rpc.rstrip("/") + "/v1/nodes", timeout=30) as response:
            listed = json.loads(response.read())["nodes"]
    except (OSError, ValueError) as exc:
        raise RpcFailure(f"GET /v1/nodes at {rpc}: {exc}") from None
    status["market"] = next((n for n in listed if n["address"] == status["node"]), None)
    return status


def withdraw_stake(rpc: str, chain_id: int, key: bytes) -> int:
    """Take a leaving node's stake back once its unbonding period is over; the amount.
    Refuses (nothing sent) while the node is not leaving or the period is still running."""
    node = address_of(key)
    wait_for_ledger(rpc)
    until = market_uint(rpc, unbonding_until_call(node))
    if until == 0:
        raise RpcFailure(f"node 0x{node.hex()} is not leaving: run `lattice worker unstake` first")
    now = int(rpc_call(rpc, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
    if now < until:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until))
        raise RpcFailure(f"still unbonding: the stake is withdrawable in {until - now} s ({when})")
    stake = market_uint(rpc, stakes_call(node))
    send_call(rpc, chain_id, key, JOB_MARKET, withdraw_stake_call(), gas=100_000)
    return stake
