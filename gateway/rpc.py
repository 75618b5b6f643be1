"""Ethereum JSON-RPC (execution-apis), over the ledger view and the transaction intake.

Single and batch requests per JSON-RPC 2.0. Errors carry the spec's codes: -32700 parse
error, -32600 invalid request (also for an oversize batch), -32601 unknown method, -32602
invalid params, -32603 internal error, -32000 for transactions the node refuses (geth's
messages, which wallets recognise: "nonce too low", "insufficient funds for gas * price +
value", ...), 3 for a reverted call with the revert data.

Block tags: `latest` and `pending` are the executed head (blocks are built by proposers, so
there is no local pending block); `safe` is the head too, since only final DAG chain blocks
are ever executed (the ordered topic is never revised); `finalized` is the highest height a
majority of execution replicas signed alike (`gateway.checkpointview`); `earliest` is 0.
`eth_getTransactionCount(addr, "pending")` adds the transactions this gateway accepted that
are not executed yet.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import rlp
from eth._utils.address import generate_contract_address
from eth.exceptions import OutOfGas, Revert
from eth.vm.spoof import SpoofTransaction
from eth_bloom import BloomFilter  # type: ignore[attr-defined]
from eth_hash.auto import keccak
from eth_typing import Address
from eth_utils.exceptions import ValidationError

from gateway.chainview import CallFailed, ChainView, LedgerNotReady
from gateway.checkpointview import CheckpointView
from gateway.dagview import DagView
from processors.execution.transactions import InvalidTransaction, Transaction
from processors.proposer.mempool import PRICE_BUMP_PERCENT, replaces

MAX_BATCH = 1000
#: Senders with pending transactions beyond which executed ones are swept out.
MAX_PENDING_SENDERS = 10_000
#: Most blocks one eth_getLogs may scan, and logs it may return (geth-like limits).
MAX_LOG_RANGE = 10_000
MAX_LOGS = 10_000
#: Filters nobody polled for this long are dropped, as geth does.
FILTER_TIMEOUT_S = 300
#: eth_call and eth_estimateGas outcomes remembered (by block and call), each at most this
#: many characters.
CALL_CACHE_SIZE = 4096
CALL_CACHE_MAX_RESULT = 4096
CLIENT = "lattice"


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def invalid_params(message: str) -> RpcError:
    return RpcError(-32602, message)


# -- encoding ------------------------------------------------------------------------------


def qty(n: int) -> str:
    return hex(n)


def data(b: bytes) -> str:
    return "0x" + b.hex()


def address(b: bytes | None) -> str | None:
    return None if not b else "0x" + b.hex()


def parse_qty(value: Any, what: str) -> int:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise invalid_params(f"{what}: expected a 0x-hex quantity, got {value!r}")


def parse_data(value: Any, what: str, size: int | None = None) -> bytes:
    if isinstance(value, str) and value.startswith("0x"):
        try:
            raw = bytes.fromhex(value[2:])
        except ValueError:
            raw = None
        if raw is not None and (size is None or len(raw) == size):
            return raw
    expected = f"{size} bytes of 0x-hex" if size else "0x-hex data"
    raise invalid_params(f"{what}: expected {expected}, got {value!r}")


def _param(params: list[Any], index: int, what: str, default: Any = ...) -> Any:
    if index < len(params):
        return params[index]
    if default is ...:
        raise invalid_params(f"missing parameter {index + 1}: {what}")
    return default


class Rpc:
    def __init__(
        self,
        view: ChainView,
        submit: Callable[[bytes, str], Awaitable[Transaction]],
        *,
        chain_id: int,
        client_version: str,
        block_gas_limit: int,
        dag: DagView | None = None,
        checkpoints: CheckpointView | None = None,
    ) -> None:
        self.view = view
        self.dag = dag
        self.checkpoints = checkpoints
        self.submit = submit
        self.chain_id = chain_id
        self.client_version = client_version
        self.block_gas_limit = block_gas_limit
        #: Transactions this gateway accepted and execution has not yet reached, per sender
        #: and nonce: pending nonces, duplicates and replacements are judged against them.
        self.pending: dict[bytes, dict[int, Transaction]] = {}
        #: Hashes accepted by this gateway, in order, for pending-transaction filters.
        self.accepted: list[bytes] = []
        self.filters: dict[str, _Filter] = {}
        #: Executed blocks never change: their receipts are built once (LRU by block hash).
        self._receipt_cache: OrderedDict[bytes, list[dict[str, Any]]] = OrderedDict()
        #: eth_call and eth_estimateGas outcomes by (block hash, kind + call), oldest first.
        self._call_cache: OrderedDict[tuple[bytes, str], str | tuple[int, str, Any]] = OrderedDict()
        self._filter_ids = itertools.count(1)
        self.methods: dict[str, Callable[[list[Any]], Any]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("rpc_")
        }

    # -- framing ---------------------------------------------------------------------

    async def handle(self, body: bytes) -> Any:
        """A response document for a request body (None for notification-only input)."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(None, RpcError(-32700, "parse error: the body is not valid JSON"))
        if isinstance(request, list):
            if not request:
                return _error(None, RpcError(-32600, "invalid request: empty batch"))
            if len(request) > MAX_BATCH:
                return _error(
                    None,
                    RpcError(
                        -32600, f"invalid request: batch of {len(request)} exceeds {MAX_BATCH}"
                    ),
                )
            # Concurrently, so that a batch of transactions waits for the broker once, not
            # once per transaction; each call runs up to its first wait in batch order, so
            # a sender's transactions still reach the log in the order given.
            responses = await asyncio.gather(*(self.call(item) for item in request))
            return [r for r in responses if r is not None] or None
        return await self.call(request)

    async def call(self, request: Any) -> dict[str, Any] | None:
        if (
            not isinstance(request, dict)
            or request.get("jsonrpc") != "2.0"
            or not isinstance(request.get("method"), str)
        ):
            return _error(
                request.get("id") if isinstance(request, dict) else None,
                RpcError(-32600, "invalid request: need jsonrpc 2.0 and a method"),
            )
        ident = request.get("id")
        params = request.get("params", [])
        if not isinstance(params, list):
            return _error(ident, RpcError(-32602, "params must be an array"))
        method = self.methods.get(request["method"])
        try:
            if method is None:
                raise RpcError(
                    -32601, f"the method {request['method']} does not exist/is not available"
                )
            result = method(params)
            if asyncio.iscoroutine(result):
                result = await result
        except RpcError as exc:
            return _error(ident, exc) if "id" in request else None
        except LedgerNotReady as exc:
            return _error(ident, RpcError(-32000, str(exc)))
        if "id" not in request:
            return None  # a notification
        return {"jsonrpc": "2.0", "id": ident, "result": result}

    # -- block selection -------------------------------------------------------------

    def _header(self, tag: Any) -> Any:
        head = self.view.head()
        if tag == "finalized" and self.checkpoints is not None:
            return self.view.header(min(self.checkpoints.finalized(), head.block_number))
        if tag in ("latest", "pending", "safe", "finalized", None):
            return head
        if tag == "earliest":
            return self.view.header(0)
        if isinstance(tag, dict):
            if "blockHash" in tag:
                block_hash = parse_data(tag["blockHash"], "blockHash", 32)
                return self._block_by_hash(block_hash).header
            tag = tag.get("blockNumber")
        number = parse_qty(tag, "block")
        if number > head.block_number:
            raise RpcError(-32000, f"header not found: block {number} is beyond the head")
        return self.view.header(number)

    def _block_by_hash(self, block_hash: bytes) -> Any:
        try:
            return self.view.block_by_hash(block_hash)
        except Exception:
            raise RpcError(-32000, "block not found") from None

    # -- chain & client ---------------------------------------------------------------

    def rpc_eth_chainId(self, params: list[Any]) -> str:
        return qty(self.chain_id)

    def rpc_net_version(self, params: list[Any]) -> str:
        return str(self.chain_id)

    def rpc_net_listening(self, params: list[Any]) -> bool:
        return True

    def rpc_web3_clientVersion(self, params: list[Any]) -> str:
        return self.client_version

    def rpc_web3_sha3(self, params: list[Any]) -> str:
        return data(keccak(parse_data(_param(params, 0, "data"), "data")))

    def rpc_eth_syncing(self, params: list[Any]) -> bool:
        return False

    def rpc_eth_accounts(self, params: list[Any]) -> list[str]:
        return []  # the node holds no keys: sign in the wallet

    def rpc_eth_blockNumber(self, params: list[Any]) -> str:
        return qty(self.view.head().block_number)

    # -- fees --------------------------------------------------------------------------

    def _next_base_fee(self) -> int:
        head = self.view.head()
        child = self.view.chain.create_header_from_parent(head)
        return int(child.base_fee_per_gas or 0)

    def rpc_eth_gasPrice(self, params: list[Any]) -> str:
        return qty(self._next_base_fee() + 10**9)

    def rpc_eth_maxPriorityFeePerGas(self, params: list[Any]) -> str:
        return qty(10**9)

    def rpc_eth_feeHistory(self, params: list[Any]) -> dict[str, Any]:
        count = _param(params, 0, "blockCount")
        count = parse_qty(count, "blockCount") if isinstance(count, str) else int(count)
        newest = self._header(_param(params, 1, "newestBlock")).block_number
        percentiles = _param(params, 2, "rewardPercentiles", None) or []
        count = max(1, min(count, 1024, newest + 1))
        oldest = newest - count + 1
        headers = [self.view.header(n) for n in range(oldest, newest + 1)]
        return {
            "oldestBlock": qty(oldest),
            "baseFeePerGas": [qty(h.base_fee_per_gas or 0) for h in headers]
            + [qty(self._next_base_fee())],
            "gasUsedRatio": [h.gas_used / h.gas_limit for h in headers],
            "reward": [[qty(10**9) for _ in percentiles] for _ in headers],
        }

    # -- accounts ----------------------------------------------------------------------

    def _state(self, params: list[Any], index: int) -> Any:
        return self.view.state(self._header(_param(params, index, "block", "latest")))

    def rpc_eth_getBalance(self, params: list[Any]) -> str:
        who = Address(parse_data(_param(params, 0, "address"), "address", 20))
        return qty(self._state(params, 1).get_balance(who))

    def rpc_eth_getTransactionCount(self, params: list[Any]) -> str:
        who = parse_data(_param(params, 0, "address"), "address", 20)
        nonce = int(self._state(params, 1).get_nonce(Address(who)))
        if _param(params, 1, "block", "latest") == "pending":
            waiting = self.pending.get(who, {})
            while nonce in waiting:
                nonce += 1
        return qty(nonce)

    def rpc_eth_getCode(self, params: list[Any]) -> str:
        who = Address(parse_data(_param(params, 0, "address"), "address", 20))
        return data(self._state(params, 1).get_code(who))

    def rpc_eth_getStorageAt(self, params: list[Any]) -> str:
        who = Address(parse_data(_param(params, 0, "address"), "address", 20))
        slot = parse_qty(_param(params, 1, "slot"), "slot")
        value = self._state(params, 2).get_storage(who, slot)
        return data(value.to_bytes(32, "big"))

    # -- calls -------------------------------------------------------------------------

    def _spoof(self, call: Any, header: Any) -> SpoofTransaction:
        if not isinstance(call, dict):
            raise invalid_params("the call must be an object")
        sender = parse_data(call["from"], "from", 20) if call.get("from") else b"\0" * 20
        to = parse_data(call["to"], "to", 20) if call.get("to") else b""
        payload = call.get("data", call.get("input", "0x"))
        vm = self.view.vm(header)
        state = vm.state
        unsigned = vm.create_unsigned_transaction(
            nonce=state.get_nonce(Address(sender)),
            gas_price=0,
            gas=parse_qty(call["gas"], "gas") if call.get("gas") else self.block_gas_limit,
            to=Address(to),
            value=parse_qty(call["value"], "value") if call.get("value") else 0,
            data=parse_data(payload, "data"),
        )
        return SpoofTransaction(unsigned, from_=sender)

    def rpc_eth_call(self, params: list[Any]) -> str:
        return self._remembered("call", params, self._run_call)

    def rpc_eth_estimateGas(self, params: list[Any]) -> str:
        return self._remembered("estimate", params, self._run_estimate)

    def _remembered(
        self, kind: str, params: list[Any], run: Callable[[Any, Any], str | tuple[int, str, Any]]
    ) -> str:
        """`run(header, call)`'s outcome, remembered by block and call.

        A call's outcome is a function of the block it runs on and its fields alone, and
        executed blocks never change: the same call on the same block is answered from
        memory (dapps poll the same balanceOf/allowance/getReserves every block).
        """
        header = self._header(_param(params, 1, "block", "latest"))
        call = _param(params, 0, "call")
        key = (
            (header.hash, kind + json.dumps(call, sort_keys=True))
            if isinstance(call, dict)
            else None
        )
        outcome = self._call_cache.get(key) if key else None
        if outcome is None:
            outcome = run(header, call)
            size = len(outcome) if isinstance(outcome, str) else len(str(outcome))
            if key and size <= CALL_CACHE_MAX_RESULT:  # small outcomes only: bounded memory
                self._call_cache[key] = outcome
                if len(self._call_cache) > CALL_CACHE_SIZE:
                    self._call_cache.popitem(last=False)
        if isinstance(outcome, tuple):  # a fresh exception each time: a raised one keeps frames
            raise RpcError(*outcome)
        return outcome

    def _run_call(self, header: Any, call: Any) -> str | tuple[int, str, Any]:
        """The call's result, or the (code, message, data) of its error."""
        tx = self._spoof(call, header)
        try:
            computation = self.view.call(header, tx)
        except ValidationError as exc:  # a value above the sender's balance, gas too low
            return -32000, f"invalid call: {exc}", None
        if computation.is_error:
            output = computation.output
            return 3, "execution reverted" + _reason(output), data(output)
        return data(computation.output)

    def _run_estimate(self, header: Any, call: Any) -> str | tuple[int, str, Any]:
        """The gas the call needs, or the (code, message, data) of why it fails."""
        tx = self._spoof(call, header)
        try:
            return qty(self.view.estimate_gas(header, tx))
        except ValidationError as exc:  # a value above the sender's balance
            return -32000, f"invalid call: {exc}", None
        except CallFailed as failed:
            error = failed.computation.error if failed.computation is not None else None
            if isinstance(error, Revert):
                output = failed.computation.output
                return 3, "execution reverted" + _reason(output), data(output)
            if isinstance(error, OutOfGas):
                return -32000, f"gas required exceeds allowance ({tx.gas})", None
            return -32000, f"execution failed: {error or 'invalid call'}", None

    # -- transactions ------------------------------------------------------------------

    async def rpc_eth_sendRawTransaction(self, params: list[Any]) -> str:
        raw = parse_data(_param(params, 0, "raw transaction"), "raw transaction")
        try:
            tx = await self.submit(raw, "rpc")
        except InvalidTransaction as exc:
            raise RpcError(-32000, exc.message) from None
        return data(tx.hash)

    def note_accepted(self, tx: Transaction) -> None:
        """Remember a transaction this gateway logged (pending-transaction filters)."""
        self.accepted.append(tx.hash)
        if len(self.accepted) > 20_000:  # keep memory bounded; slow pollers lose the oldest
            drop = 10_000
            del self.accepted[:drop]
            for f in self.filters.values():
                if f.kind == "pending":
                    f.cursor = max(0, f.cursor - drop)

    def admit(self, tx: Transaction) -> Transaction | None:
        """The stateful checks a node makes before accepting a transaction, then a place
        among this gateway's pending transactions. Returns the transaction it replaces, if
        any (give it to `release` should the log refuse `tx`).

        A second transaction with a pending one's sender and nonce is refused unless it
        bumps both fee caps by 10% (the mempool's rule, geth's "replacement transaction
        underpriced"); otherwise the gateway would acknowledge a transaction every proposer
        is bound to drop.
        """
        state = self.view.state(self.view.head())
        nonce = int(state.get_nonce(Address(tx.sender)))
        if tx.nonce < nonce:
            raise InvalidTransaction(
                "nonce_too_low", f"nonce too low: next nonce {nonce}, tx nonce {tx.nonce}"
            )
        cost = tx.gas_limit * tx.fee_cap + tx.value
        balance = int(state.get_balance(Address(tx.sender)))
        if balance < cost:
            raise InvalidTransaction(
                "insufficient_funds",
                f"insufficient funds for gas * price + value: balance {balance}, tx cost {cost}",
            )
        waiting = self.pending.setdefault(tx.sender, {})
        # Executed ones leave from the front (senders send in nonce order, so insertion order
        # is nonce order): O(1) per call even with thousands pending. One sent out of order
        # lingers harmlessly below the state nonce until the sweep.
        while waiting and (oldest := next(iter(waiting))) < nonce:
            del waiting[oldest]
        previous = waiting.get(tx.nonce)
        if previous is not None:
            if previous.hash == tx.hash:
                raise InvalidTransaction("already_known", "already known")
            if not replaces(tx, previous):
                raise InvalidTransaction(
                    "underpriced",
                    "replacement transaction underpriced: raise the fee cap and the tip by "
                    f"{PRICE_BUMP_PERCENT}% over the pending transaction {data(previous.hash)}",
                )
        waiting[tx.nonce] = tx
        if len(self.pending) > MAX_PENDING_SENDERS:
            self._forget_executed(state)
        return previous

    def release(self, tx: Transaction, previous: Transaction | None) -> None:
        """Undo `admit` for a transaction the log did not take."""
        waiting = self.pending.get(tx.sender, {})
        if waiting.get(tx.nonce) is tx:
            if previous is None:
                del waiting[tx.nonce]
            else:
                waiting[tx.nonce] = previous

    def _forget_executed(self, state: Any) -> None:
        for sender in list(self.pending):
            nonce = int(state.get_nonce(Address(sender)))
            waiting = {n: t for n, t in self.pending[sender].items() if n >= nonce}
            if waiting:
                self.pending[sender] = waiting
            else:
                del self.pending[sender]

    def block_receipts(self, block: Any) -> list[dict[str, Any]]:
        key = block.header.hash
        cached = self._receipt_cache.get(key)
        if cached is None:
            cached = _receipts(self.view, block)
            self._receipt_cache[key] = cached
            if len(self._receipt_cache) > 256:
                self._receipt_cache.popitem(last=False)
        else:
            self._receipt_cache.move_to_end(key)
        return cached

    def _location(self, tx_hash: bytes) -> tuple[Any, int] | None:
        try:
            number, index = self.view.chain.chaindb.get_transaction_index(tx_hash)  # type: ignore[arg-type]
        except Exception:
            return None
        return self.view.block(number), index

    def rpc_eth_getTransactionByHash(self, params: list[Any]) -> dict[str, Any] | None:
        found = self._location(parse_data(_param(params, 0, "hash"), "hash", 32))
        return None if found is None else _tx(found[0], found[1])

    def rpc_eth_getTransactionReceipt(self, params: list[Any]) -> dict[str, Any] | None:
        found = self._location(parse_data(_param(params, 0, "hash"), "hash", 32))
        if found is None:
            return None
        block, index = found
        return self.block_receipts(block)[index]

    def rpc_eth_getBlockReceipts(self, params: list[Any]) -> list[dict[str, Any]]:
        header = self._header(_param(params, 0, "block"))
        return self.block_receipts(self.view.block(header.block_number))

    def _block(self, block: Any, full: Any) -> dict[str, Any]:
        if not isinstance(full, bool):
            raise invalid_params("the second parameter must be a boolean")
        return block_json(block, full)

    def rpc_eth_getBlockByNumber(self, params: list[Any]) -> dict[str, Any] | None:
        try:
            header = self._header(_param(params, 0, "block"))
        except RpcError as exc:
            if exc.code == -32000:
                return None
            raise
        return self._block(self.view.block(header.block_number), _param(params, 1, "full", False))

    def rpc_eth_getBlockByHash(self, params: list[Any]) -> dict[str, Any] | None:
        block_hash = parse_data(_param(params, 0, "hash"), "hash", 32)
        try:
            block = self.view.block_by_hash(block_hash)
        except Exception:
            return None
        return self._block(block, _param(params, 1, "full", False))

    def rpc_eth_getBlockTransactionCountByNumber(self, params: list[Any]) -> str:
        header = self._header(_param(params, 0, "block"))
        return qty(len(self.view.block(header.block_number).transactions))

    def rpc_eth_getBlockTransactionCountByHash(self, params: list[Any]) -> str:
        block = self._block_by_hash(parse_data(_param(params, 0, "hash"), "hash", 32))
        return qty(len(block.transactions))

    def rpc_lattice_status(self, params: list[Any]) -> dict[str, Any]:
        """Head, finality and replica agreement, for operators."""
        status: dict[str, Any] = {"head": qty(self.view.head().block_number)}
        if self.checkpoints is not None:
            replicas = self.checkpoints.status()
            replicas["finalized"] = qty(replicas["finalized"])
            status["checkpoints"] = replicas
            status["healthy"] = not replicas["divergences"]
        return status

    # -- the DAG -----------------------------------------------------------------------

    def _dag(self) -> DagView:
        if self.dag is None:
            raise RpcError(-32601, "DAG methods are not served by this gateway")
        return self.dag

    def rpc_dag_getTips(self, params: list[Any]) -> list[str]:
        return [data(t) for t in self._dag().tips()]

    def rpc_dag_getBlock(self, params: list[Any]) -> dict[str, Any] | None:
        found = self._dag().block(parse_data(_param(params, 0, "hash"), "hash", 32))
        if found is None:
            return None
        out: dict[str, Any] = {}
        for key, value in found.items():
            name = "".join(w if i == 0 else w.title() for i, w in enumerate(key.split("_")))
            if isinstance(value, bytes):
                out[name] = data(value)
            elif isinstance(value, list):
                out[name] = [data(v) for v in value]
            elif isinstance(value, int) and not isinstance(value, bool):
                out[name] = qty(value)
            else:
                out[name] = value
        return out

    def rpc_dag_getVirtualChain(self, params: list[Any]) -> list[dict[str, Any]]:
        limit = _param(params, 0, "limit", "0x64")
        count = min(parse_qty(limit, "limit") if isinstance(limit, str) else int(limit), 10_000)
        return [
            {"hash": data(c["hash"]), "blueScore": qty(c["blue_score"]), "final": c["final"]}
            for c in self._dag().virtual_chain(count)
        ]

    # -- logs and filters --------------------------------------------------------------

    def logs(self, criteria: LogCriteria, first: int, last: int) -> list[dict[str, Any]]:
        if last - first + 1 > MAX_LOG_RANGE:
            raise RpcError(-32005, f"query exceeds the limit of {MAX_LOG_RANGE} blocks")
        found: list[dict[str, Any]] = []
        for number in range(first, last + 1):
            header = self.view.header(number)
            if not criteria.may_match(header.bloom):
                continue
            for receipt in self.block_receipts(self.view.block(number)):
                found.extend(e for e in receipt["logs"] if criteria.matches(e))
            if len(found) > MAX_LOGS:
                raise RpcError(-32005, f"query returned more than {MAX_LOGS} results")
        return found

    def _range(self, criteria: LogCriteria) -> tuple[int, int]:
        if criteria.block_hash is not None:
            number = self._block_by_hash(criteria.block_hash).header.block_number
            return number, number
        first = self._header(criteria.from_block).block_number
        last = self._header(criteria.to_block).block_number
        if first > last:
            raise invalid_params("fromBlock is after toBlock")
        return first, last

    def rpc_eth_getLogs(self, params: list[Any]) -> list[dict[str, Any]]:
        criteria = LogCriteria(_param(params, 0, "filter"))
        return self.logs(criteria, *self._range(criteria))

    def _new_filter(self, kind: str, criteria: Any, cursor: int) -> str:
        now = time.monotonic()
        for ident in [i for i, f in self.filters.items() if now - f.touched > FILTER_TIMEOUT_S]:
            del self.filters[ident]
        ident = qty(next(self._filter_ids))
        self.filters[ident] = _Filter(kind, criteria, cursor)
        return ident

    def rpc_eth_newFilter(self, params: list[Any]) -> str:
        criteria = LogCriteria(_param(params, 0, "filter"))
        start = self._header(criteria.from_block).block_number
        return self._new_filter("logs", criteria, start)

    def rpc_eth_newBlockFilter(self, params: list[Any]) -> str:
        return self._new_filter("blocks", None, self.view.head().block_number + 1)

    def rpc_eth_newPendingTransactionFilter(self, params: list[Any]) -> str:
        return self._new_filter("pending", None, len(self.accepted))

    def _filter(self, params: list[Any]) -> _Filter:
        found = self.filters.get(_param(params, 0, "filter id"))
        if found is None:
            raise RpcError(-32000, "filter not found")
        found.touched = time.monotonic()
        return found

    def rpc_eth_getFilterChanges(self, params: list[Any]) -> list[Any]:
        found = self._filter(params)
        if found.kind == "pending":
            new = self.accepted[found.cursor :]
            found.cursor = len(self.accepted)
            return [data(h) for h in new]
        head = self.view.head().block_number
        first, found.cursor = found.cursor, head + 1
        if found.kind == "blocks":
            return [data(self.view.header(n).hash) for n in range(first, head + 1)]
        last = min(head, self._header(found.criteria.to_block).block_number)
        return self.logs(found.criteria, first, last) if first <= last else []

    def rpc_eth_getFilterLogs(self, params: list[Any]) -> list[dict[str, Any]]:
        found = self._filter(params)
        if found.kind != "logs":
            raise RpcError(-32000, "filter is not a log filter")
        return self.logs(found.criteria, *self._range(found.criteria))

    def rpc_eth_uninstallFilter(self, params: list[Any]) -> bool:
        return self.filters.pop(_param(params, 0, "filter id"), None) is not None

    def rpc_eth_getTransactionByBlockNumberAndIndex(self, params: list[Any]) -> Any:
        header = self._header(_param(params, 0, "block"))
        index = parse_qty(_param(params, 1, "index"), "index")
        block = self.view.block(header.block_number)
        return _tx(block, index) if index < len(block.transactions) else None

    def rpc_eth_getTransactionByBlockHashAndIndex(self, params: list[Any]) -> Any:
        block = self._block_by_hash(parse_data(_param(params, 0, "hash"), "hash", 32))
        index = parse_qty(_param(params, 1, "index"), "index")
        return _tx(block, index) if index < len(block.transactions) else None


class _Filter:
    def __init__(self, kind: str, criteria: Any, cursor: int) -> None:
        self.kind = kind
        self.criteria = criteria
        self.cursor = cursor  # next block number (or accepted index) to report from
        self.touched = time.monotonic()


class LogCriteria:
    """An eth_getLogs / eth_newFilter filter object, parsed and checked."""

    def __init__(self, spec: Any) -> None:
        if not isinstance(spec, dict):
            raise invalid_params("the filter must be an object")
        raw_addresses = spec.get("address") or []
        if isinstance(raw_addresses, str):
            raw_addresses = [raw_addresses]
        self.addresses = [parse_data(a, "address", 20) for a in raw_addresses]
        self.topics: list[list[bytes] | None] = []
        for position in spec.get("topics") or []:
            if position is None:
                self.topics.append(None)
            elif isinstance(position, str):
                self.topics.append([parse_data(position, "topic", 32)])
            elif isinstance(position, list):
                self.topics.append([parse_data(t, "topic", 32) for t in position] or None)
            else:
                raise invalid_params("each topic must be null, a topic or a list of topics")
        self.block_hash = (
            parse_data(spec["blockHash"], "blockHash", 32) if spec.get("blockHash") else None
        )
        self.from_block = spec.get("fromBlock", "latest")
        self.to_block = spec.get("toBlock", "latest")

    def may_match(self, bloom: int) -> bool:
        filter_ = BloomFilter(bloom)
        if self.addresses and not any(a in filter_ for a in self.addresses):
            return False
        return all(
            any(t in filter_ for t in options) for options in self.topics if options is not None
        )

    def matches(self, entry: dict[str, Any]) -> bool:
        if self.addresses and bytes.fromhex(entry["address"][2:]) not in self.addresses:
            return False
        topics = entry["topics"]
        for i, options in enumerate(self.topics):
            if options is None:
                continue
            if i >= len(topics) or bytes.fromhex(topics[i][2:]) not in options:
                return False
        return True


def _reason(output: bytes) -> str:
    # Error(string): selector 0x08c379a0, then an ABI-encoded string.
    if output[:4] == bytes.fromhex("08c379a0") and len(output) >= 68:
        length = int.from_bytes(output[36:68], "big")
        return ": " + output[68 : 68 + length].decode(errors="replace")
    return ""


def _error(ident: Any, exc: RpcError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.data is not None:
        error["data"] = exc.data
    return {"jsonrpc": "2.0", "id": ident, "error": error}


def _sender(tx: Any) -> bytes:
    return bytes(tx.sender)


def _tx(block: Any, index: int) -> dict[str, Any]:
    tx = block.transactions[index]
    header = block.header
    kind = getattr(tx, "type_id", None) or 0
    out: dict[str, Any] = {
        "blockHash": data(header.hash),
        "blockNumber": qty(header.block_number),
        "transactionIndex": qty(index),
        "hash": data(tx.hash),
        "from": address(_sender(tx)),
        "to": address(tx.to),
        "nonce": qty(tx.nonce),
        "gas": qty(tx.gas),
        "value": qty(tx.value),
        "input": data(tx.data),
        "type": qty(kind),
        "chainId": qty(tx.chain_id) if tx.chain_id is not None else None,
        "v": qty(tx.v if kind == 0 else tx.y_parity),
        "r": qty(tx.r),
        "s": qty(tx.s),
    }
    if kind == 2:
        base = header.base_fee_per_gas or 0
        out["maxFeePerGas"] = qty(tx.max_fee_per_gas)
        out["maxPriorityFeePerGas"] = qty(tx.max_priority_fee_per_gas)
        out["gasPrice"] = qty(min(tx.max_fee_per_gas, base + tx.max_priority_fee_per_gas))
        out["yParity"] = qty(tx.y_parity)
    else:
        out["gasPrice"] = qty(tx.gas_price)
    if kind in (1, 2):
        out["accessList"] = [
            {"address": address(a), "storageKeys": [data(k.to_bytes(32, "big")) for k in keys]}
            for a, keys in tx.access_list
        ]
        out["yParity"] = qty(tx.y_parity)
    return out


def _receipts(view: ChainView, block: Any) -> list[dict[str, Any]]:
    header = block.header
    receipts = block.get_receipts(view.chain.chaindb)
    out = []
    previous = 0
    log_index = 0
    for index, (tx, receipt) in enumerate(zip(block.transactions, receipts, strict=True)):
        base = header.base_fee_per_gas or 0
        kind = getattr(tx, "type_id", None) or 0
        price = (
            min(tx.max_fee_per_gas, base + tx.max_priority_fee_per_gas)
            if kind == 2
            else tx.gas_price
        )
        sender = _sender(tx)
        logs = []
        for entry in receipt.logs:
            logs.append(
                {
                    "address": address(entry.address),
                    "topics": [data(t.to_bytes(32, "big")) for t in entry.topics],
                    "data": data(entry.data),
                    "blockNumber": qty(header.block_number),
                    "blockHash": data(header.hash),
                    "transactionHash": data(tx.hash),
                    "transactionIndex": qty(index),
                    "logIndex": qty(log_index),
                    "removed": False,
                }
            )
            log_index += 1
        out.append(
            {
                "transactionHash": data(tx.hash),
                "transactionIndex": qty(index),
                "blockHash": data(header.hash),
                "blockNumber": qty(header.block_number),
                "from": address(sender),
                "to": address(tx.to),
                "cumulativeGasUsed": qty(receipt.gas_used),
                "gasUsed": qty(receipt.gas_used - previous),
                "effectiveGasPrice": qty(price),
                "contractAddress": address(generate_contract_address(Address(sender), tx.nonce))
                if not tx.to
                else None,
                "logs": logs,
                "logsBloom": data(receipt.bloom.to_bytes(256, "big")),
                "status": qty(1 if receipt.state_root == b"\x01" else 0),
                "type": qty(kind),
            }
        )
        previous = receipt.gas_used
    return out


_SIZES: OrderedDict[bytes, int] = OrderedDict()


def _block_size(block: Any) -> int:
    """The block's RLP size in bytes (header, transactions, uncles, withdrawals), as geth
    reports it; encoded once per block (the last 256 kept), since blocks are final."""
    key = block.header.hash
    size = _SIZES.get(key)
    if size is None:
        size = _SIZES[key] = len(rlp.encode(block))
        if len(_SIZES) > 256:
            _SIZES.popitem(last=False)
    return size


def block_json(block: Any, full: bool) -> dict[str, Any]:
    h = block.header
    out: dict[str, Any] = {
        "number": qty(h.block_number),
        "hash": data(h.hash),
        "parentHash": data(h.parent_hash),
        "nonce": data(h.nonce),
        "sha3Uncles": data(h.uncles_hash),
        "logsBloom": data(h.bloom.to_bytes(256, "big")),
        "transactionsRoot": data(h.transaction_root),
        "stateRoot": data(h.state_root),
        "receiptsRoot": data(h.receipt_root),
        "miner": address(h.coinbase),
        "difficulty": qty(h.difficulty),
        "totalDifficulty": qty(0),
        "extraData": data(h.extra_data),
        "size": qty(_block_size(block)),
        "gasLimit": qty(h.gas_limit),
        "gasUsed": qty(h.gas_used),
        "timestamp": qty(h.timestamp),
        "mixHash": data(h.mix_hash),
        "baseFeePerGas": qty(h.base_fee_per_gas or 0),
        "uncles": [],
        "transactions": [_tx(block, i) for i in range(len(block.transactions))]
        if full
        else [data(tx.hash) for tx in block.transactions],
    }
    for field, key in (
        ("withdrawals_root", "withdrawalsRoot"),
        ("blob_gas_used", "blobGasUsed"),
        ("excess_blob_gas", "excessBlobGas"),
        ("parent_beacon_block_root", "parentBeaconBlockRoot"),
        ("requests_hash", "requestsHash"),
    ):
        value = getattr(h, field, None)
        if value is not None:
            out[key] = data(value) if isinstance(value, bytes) else qty(value)
    if getattr(h, "withdrawals_root", None) is not None:
        out["withdrawals"] = []
    return out
