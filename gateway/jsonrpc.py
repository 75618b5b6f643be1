"""Ethereum JSON-RPC 2.0 (execution-apis): framing, parameters and errors, over the typed
layers (`gateway.ledger` queries, `gateway.intake`, `gateway.filters`, the DAG view).

Single and batch requests per JSON-RPC 2.0. Errors carry the spec's codes: -32700 parse
error, -32600 invalid request (also for an oversize batch), -32601 unknown method, -32602
invalid params, -32603 internal error, -32000 for transactions the node refuses (geth's
messages, which wallets recognise: "nonce too low", "insufficient funds for gas * price +
value", ...) and for blocks and filters not found, -32005 for queries over a limit, 3 for a
reverted call with the revert data.

Each method is a small function from its JSON parameters to the typed layer and back to
JSON (`gateway.formats`); the method table is built from the methods named with a
namespace's prefix (`eth_`, `net_`, `web3_`, `dag_`, `lattice_`, `personal_`, `txpool_`,
`debug_`) of `Methods` and of the method groups given to it (`gateway.jsonrpc_accounts`:
dev account signing; `gateway.jsonrpc_pool`: pending transactions).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

from eth_hash.auto import keccak

from gateway.chainview import LedgerNotReady
from gateway.dagview import DagView
from gateway.filters import Filters, Watcher, block_ref, criteria_of
from gateway.formats import (
    BadParam,
    block_json,
    camel,
    changed_logs,
    data,
    log_json,
    parse_data,
    parse_qty,
    pending_transaction_json,
    qty,
    receipt_json,
    transaction_json,
)
from gateway.intake import TransactionIntake, Unavailable
from gateway.ledger import SUGGESTED_TIP, Call, LedgerQueries, Override, QueryError
from processors.execution.transactions import InvalidTransaction, Transaction

MAX_BATCH = 1000
#: The namespaces of JSON-RPC method names.
PREFIXES = ("eth_", "net_", "web3_", "dag_", "lattice_", "personal_", "txpool_", "debug_")
#: JSON-RPC codes of the typed layer's errors.
CODES = {
    "not_found": -32000,
    "beyond_head": -32000,
    "bad_request": -32602,
    "invalid": -32000,
    "out_of_gas": -32000,
    "reverted": 3,
    "limit": -32005,
}


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def param(params: list[Any], index: int, what: str, default: Any = ...) -> Any:
    if index < len(params):
        return params[index]
    if default is ...:
        raise BadParam(f"missing parameter {index + 1}: {what}")
    return default


def call_of(spec: Any, overrides: Any = None) -> Call:
    """An `eth_call` / `eth_estimateGas` call object, checked, with geth's state override
    set (`overrides`: address -> balance, nonce, code, and state or stateDiff)."""
    if not isinstance(spec, dict):
        raise BadParam("the call must be an object")
    payload = spec.get("data", spec.get("input", "0x"))
    return Call(
        sender=parse_data(spec["from"], "from", 20) if spec.get("from") else None,
        to=parse_data(spec["to"], "to", 20) if spec.get("to") else None,
        gas=parse_qty(spec["gas"], "gas") if spec.get("gas") else None,
        value=parse_qty(spec["value"], "value") if spec.get("value") else 0,
        data=parse_data(payload, "data"),
        overrides=overrides_of(overrides),
    )


def overrides_of(spec: Any) -> tuple[tuple[bytes, Override], ...]:
    """geth's state override set, checked: address -> balance, nonce, code, state or
    stateDiff."""
    if spec is None:
        return ()
    if not isinstance(spec, dict):
        raise BadParam("state overrides: expected an object keyed by address")
    out = []
    for account, fields in sorted(spec.items()):
        if not isinstance(fields, dict):
            raise BadParam(f"state override of {account}: expected an object")
        unknown = set(fields) - {"balance", "nonce", "code", "state", "stateDiff"}
        if unknown:
            raise BadParam(f"state override of {account}: unknown fields {sorted(unknown)}")
        if "state" in fields and "stateDiff" in fields:
            raise BadParam(f"state override of {account}: has both state and stateDiff")
        override = Override(
            balance=parse_qty(fields["balance"], "balance") if "balance" in fields else None,
            nonce=parse_qty(fields["nonce"], "nonce") if "nonce" in fields else None,
            code=parse_data(fields["code"], "code") if "code" in fields else None,
            state=_slots(fields["state"]) if "state" in fields else None,
            state_diff=_slots(fields.get("stateDiff", {})),
        )
        out.append((parse_data(account, "state override address", 20), override))
    return tuple(out)


def _slot_key(value: Any) -> bytes:
    """A storage slot as `eth_getProof` takes one: up to 32 bytes (geth pads it)."""
    key = parse_data(value, "storage key")
    if len(key) > 32:
        raise BadParam(f"storage key: {len(key)} bytes, at most 32")
    return key


def _slots(spec: Any) -> tuple[tuple[int, int], ...]:
    if not isinstance(spec, dict):
        raise BadParam("state override storage: expected an object of slot -> value")
    return tuple(
        (
            int.from_bytes(parse_data(slot, "storage slot", 32), "big"),
            int.from_bytes(parse_data(value, "storage value", 32), "big"),
        )
        for slot, value in sorted(spec.items())
    )


def _count(value: Any, what: str) -> int:
    """A non-negative count, as a 0x-hex quantity or a JSON integer (geth takes both)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadParam(f"{what}: expected a 0x-hex quantity or an integer, got {value!r}")
    count = parse_qty(value, what) if isinstance(value, str) else value
    if count < 0:
        raise BadParam(f"{what}: must not be negative, got {value!r}")
    return count


#: The most reward percentiles `eth_feeHistory` takes (geth's limit).
MAX_PERCENTILES = 100


def _percentiles(value: Any) -> list[float]:
    """`eth_feeHistory`'s reward percentiles: numbers from 0 to 100, ascending."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_PERCENTILES:
        raise BadParam(f"rewardPercentiles: expected a list of at most {MAX_PERCENTILES} numbers")
    numbers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not 0 <= item <= 100:
            raise BadParam(f"rewardPercentiles: {item!r} is not a number from 0 to 100")
        numbers.append(float(item))
    if numbers != sorted(numbers):
        raise BadParam("rewardPercentiles: must be in ascending order")
    return numbers


#: The state of the processes a devnet or node supervises (name, state, pid, restarts,
#: lastExit), supplied by whoever runs them: the gateway does not run processes itself.
ProcessStatus = Callable[[], list[dict[str, object]]]


async def submit(intake: TransactionIntake, raw: bytes) -> str:
    """Send a signed transaction through the intake; its hash, or geth's refusal."""
    try:
        tx, _ = await intake.submit(raw, "rpc")
    except InvalidTransaction as exc:
        raise RpcError(-32000, exc.message) from None
    except Unavailable as exc:
        raise RpcError(-32000, str(exc)) from None
    return data(tx.hash)


class Methods:
    """The JSON-RPC methods, each a thin adapter over the typed layers."""

    def __init__(
        self,
        ledger: LedgerQueries,
        intake: TransactionIntake,
        *,
        chain_id: int,
        client_version: str,
        dag: DagView | None = None,
        processes: ProcessStatus | None = None,
        groups: Sequence[object] = (),
    ) -> None:
        """`groups`: more objects whose namespaced methods join the table (theirs win)."""
        self.ledger = ledger
        self.groups = tuple(groups)
        self.processes = processes
        self.intake = intake
        self.chain_id = chain_id
        self.client_version = client_version
        self.dag = dag
        self.watcher = Watcher(ledger, intake)
        self.filters = Filters(self.watcher)

    def table(self) -> dict[str, Callable[[list[Any]], Any]]:
        table: dict[str, Callable[[list[Any]], Any]] = {}
        for holder in (self, *self.groups):
            table.update(
                (name, getattr(holder, name)) for name in dir(holder) if name.startswith(PREFIXES)
            )
        return table

    # -- chain and client ------------------------------------------------------------------

    def eth_chainId(self, params: list[Any]) -> str:
        return qty(self.chain_id)

    def net_version(self, params: list[Any]) -> str:
        return str(self.chain_id)

    def net_listening(self, params: list[Any]) -> bool:
        return True

    def web3_clientVersion(self, params: list[Any]) -> str:
        return self.client_version

    def web3_sha3(self, params: list[Any]) -> str:
        return data(keccak(parse_data(param(params, 0, "data"), "data")))

    def eth_syncing(self, params: list[Any]) -> bool:
        return False

    def eth_accounts(self, params: list[Any]) -> list[str]:
        return []  # no keys here (a devnet's `gateway.jsonrpc_accounts` lists its own)

    def eth_blockNumber(self, params: list[Any]) -> str:
        return qty(self.ledger.head().block_number)

    def lattice_status(self, params: list[Any]) -> dict[str, Any]:
        status = self.ledger.status()
        head = status["head"]
        out: dict[str, Any] = {"head": None if head is None else qty(head)}
        replicas = status.get("checkpoints")
        if replicas is not None:
            out["checkpoints"] = {**replicas, "finalized": qty(replicas["finalized"])}
            out["healthy"] = not replicas["divergences"]
        if self.processes is not None:
            out["processes"] = self.processes()
        return out

    # -- fees ------------------------------------------------------------------------------

    def eth_blobBaseFee(self, params: list[Any]) -> str:
        return qty(self.ledger.blob_base_fee())

    def eth_gasPrice(self, params: list[Any]) -> str:
        return qty(self.ledger.gas_price())

    def eth_maxPriorityFeePerGas(self, params: list[Any]) -> str:
        return qty(SUGGESTED_TIP)

    def eth_feeHistory(self, params: list[Any]) -> dict[str, Any]:
        count = _count(param(params, 0, "blockCount"), "blockCount")
        newest = block_ref(param(params, 1, "newestBlock"), "newestBlock")
        percentiles = _percentiles(param(params, 2, "rewardPercentiles", None))
        history = self.ledger.fee_history(count, newest, len(percentiles))
        return {
            "oldestBlock": qty(history.oldest),
            "baseFeePerGas": [qty(f) for f in history.base_fees],
            "gasUsedRatio": list(history.gas_used_ratios),
            "reward": [[qty(r) for r in block] for block in history.rewards],
        }

    # -- accounts and calls ----------------------------------------------------------------

    def eth_getBalance(self, params: list[Any]) -> str:
        who = parse_data(param(params, 0, "address"), "address", 20)
        return qty(self.ledger.balance(who, block_ref(param(params, 1, "block", "latest"))))

    def eth_getTransactionCount(self, params: list[Any]) -> str:
        who = parse_data(param(params, 0, "address"), "address", 20)
        tag = param(params, 1, "block", "latest")
        nonce = self.ledger.nonce(who, block_ref(tag))
        if tag == "pending":
            nonce = self.intake.pending_nonce(who, nonce)
        return qty(nonce)

    def eth_getCode(self, params: list[Any]) -> str:
        who = parse_data(param(params, 0, "address"), "address", 20)
        return data(self.ledger.code(who, block_ref(param(params, 1, "block", "latest"))))

    def eth_getStorageAt(self, params: list[Any]) -> str:
        who = parse_data(param(params, 0, "address"), "address", 20)
        slot = parse_qty(param(params, 1, "slot"), "slot")
        value = self.ledger.storage(who, slot, block_ref(param(params, 2, "block", "latest")))
        return data(value.to_bytes(32, "big"))

    def eth_getProof(self, params: list[Any]) -> dict[str, Any]:
        who = parse_data(param(params, 0, "address"), "address", 20)
        keys = param(params, 1, "storage keys")
        if not isinstance(keys, list):
            raise BadParam("storage keys: expected a list of 32-byte slots")
        slots = [int.from_bytes(_slot_key(k), "big") for k in keys]
        found = self.ledger.proof(who, slots, block_ref(param(params, 2, "block", "latest")))
        return {
            "address": data(found.address),
            "balance": qty(found.balance),
            "nonce": qty(found.nonce),
            "codeHash": data(found.code_hash),
            "storageHash": data(found.storage_root),
            "accountProof": [data(node) for node in found.proof],
            "storageProof": [
                {
                    "key": key,
                    "value": qty(slot.value),
                    "proof": [data(node) for node in slot.proof],
                }
                for key, slot in zip(keys, found.storage, strict=True)
            ],
        }

    def eth_call(self, params: list[Any]) -> str:
        call = call_of(param(params, 0, "call"), param(params, 2, "state overrides", None))
        return data(self.ledger.call(call, block_ref(param(params, 1, "block", "latest"))))

    def eth_createAccessList(self, params: list[Any]) -> dict[str, Any]:
        call = call_of(param(params, 0, "call"), param(params, 2, "state overrides", None))
        found = self.ledger.access_list(call, block_ref(param(params, 1, "block", "latest")))
        out: dict[str, Any] = {
            "accessList": [
                {
                    "address": data(address),
                    "storageKeys": [data(slot.to_bytes(32, "big")) for slot in slots],
                }
                for address, slots in found.entries
            ],
            "gasUsed": qty(found.gas_used),
        }
        if found.error is not None:
            out["error"] = found.error
        return out

    def eth_estimateGas(self, params: list[Any]) -> str:
        call = call_of(param(params, 0, "call"), param(params, 2, "state overrides", None))
        ref = block_ref(param(params, 1, "block", "latest"))
        return qty(self.ledger.estimate_gas(call, ref))

    # -- transactions ----------------------------------------------------------------------

    async def eth_sendRawTransaction(self, params: list[Any]) -> str:
        raw = parse_data(param(params, 0, "raw transaction"), "raw transaction")
        return await submit(self.intake, raw)

    def eth_getTransactionByHash(self, params: list[Any]) -> dict[str, Any] | None:
        tx_hash = parse_data(param(params, 0, "hash"), "hash", 32)
        found = self.ledger.locate(tx_hash)
        if found is not None:
            return transaction_json(*found)
        pending = self._pending(tx_hash)
        return None if pending is None else pending_transaction_json(self.ledger.decoded(pending))

    def _pending(self, tx_hash: bytes) -> Transaction | None:
        """A transaction the network accepted that no executed block holds yet."""
        tx = self.intake.find(tx_hash)
        if tx is None or tx.nonce < self.ledger.nonce(tx.sender):
            return None
        return tx

    def eth_getRawTransactionByHash(self, params: list[Any]) -> str | None:
        tx_hash = parse_data(param(params, 0, "hash"), "hash", 32)
        found = self.ledger.locate(tx_hash)
        if found is not None:
            block, index = found
            return data(block.transactions[index].encode())
        pending = self._pending(tx_hash)
        return None if pending is None else data(pending.raw)

    def _raw_by_index(self, block_param: Any, index_param: Any) -> str | None:
        block = self.ledger.block(block_param)
        index = parse_qty(index_param, "index")
        return data(block.transactions[index].encode()) if index < len(block.transactions) else None

    def eth_getRawTransactionByBlockNumberAndIndex(self, params: list[Any]) -> str | None:
        return self._raw_by_index(block_ref(param(params, 0, "block")), param(params, 1, "index"))

    def eth_getRawTransactionByBlockHashAndIndex(self, params: list[Any]) -> str | None:
        block_hash = parse_data(param(params, 0, "hash"), "hash", 32)
        return self._raw_by_index(block_hash, param(params, 1, "index"))

    def eth_getTransactionReceipt(self, params: list[Any]) -> dict[str, Any] | None:
        receipt = self.ledger.receipt(parse_data(param(params, 0, "hash"), "hash", 32))
        return None if receipt is None else receipt_json(receipt)

    def _by_index(self, block_param: Any, index_param: Any) -> dict[str, Any] | None:
        block = self.ledger.block(block_param)
        index = parse_qty(index_param, "index")
        return transaction_json(block, index) if index < len(block.transactions) else None

    def eth_getTransactionByBlockNumberAndIndex(self, params: list[Any]) -> Any:
        ref = block_ref(param(params, 0, "block"))
        return self._by_index(ref, param(params, 1, "index"))

    def eth_getTransactionByBlockHashAndIndex(self, params: list[Any]) -> Any:
        block_hash = parse_data(param(params, 0, "hash"), "hash", 32)
        return self._by_index(block_hash, param(params, 1, "index"))

    # -- blocks ----------------------------------------------------------------------------

    def _block(self, ref: Any, full: Any) -> dict[str, Any]:
        if not isinstance(full, bool):
            raise BadParam("the second parameter must be a boolean")
        if ref == "pending":
            return self._pending_block(full)
        block = self.ledger.block(ref)
        return block_json(block, full, self.ledger.block_size(block))

    def _pending_block(self, full: bool) -> dict[str, Any]:
        """The block the runnable pending transactions would make on the head, as geth
        shows its pending block: no hash, nonce or miner yet."""
        block = self.ledger.pending_block(self.intake.pool(self.ledger.nonce).runnable())
        out = block_json(block, False, self.ledger.block_size(block))
        out.update(hash=None, nonce=None, miner=None)
        if full:
            out["transactions"] = [pending_transaction_json(tx) for tx in block.transactions]
        return out

    def eth_getBlockByNumber(self, params: list[Any]) -> dict[str, Any] | None:
        try:
            return self._block(
                block_ref(param(params, 0, "block")), param(params, 1, "full", False)
            )
        except QueryError:
            return None

    def eth_getBlockByHash(self, params: list[Any]) -> dict[str, Any] | None:
        block_hash = parse_data(param(params, 0, "hash"), "hash", 32)
        try:
            return self._block(block_hash, param(params, 1, "full", False))
        except QueryError:
            return None

    def eth_getBlockReceipts(self, params: list[Any]) -> list[dict[str, Any]]:
        block = self.ledger.block(block_ref(param(params, 0, "block")))
        return [receipt_json(r) for r in self.ledger.receipts(block)]

    def eth_getBlockTransactionCountByNumber(self, params: list[Any]) -> str:
        ref = block_ref(param(params, 0, "block"))
        if ref == "pending":
            runnable = self.intake.pool(self.ledger.nonce).runnable()
            return qty(len(self.ledger.pending_block(runnable).transactions))
        return qty(len(self.ledger.block(ref).transactions))

    def eth_getBlockTransactionCountByHash(self, params: list[Any]) -> str:
        block_hash = parse_data(param(params, 0, "hash"), "hash", 32)
        return qty(len(self.ledger.block(block_hash).transactions))

    # -- logs and filters ------------------------------------------------------------------

    def eth_getLogs(self, params: list[Any]) -> list[dict[str, Any]]:
        criteria = criteria_of(param(params, 0, "filter"))
        found = self.ledger.logs(criteria, *self.ledger.log_range(criteria))
        return [log_json(receipt, i) for receipt, i in found]

    def eth_newFilter(self, params: list[Any]) -> str:
        return self.filters.install("logs", criteria_of(param(params, 0, "filter")))

    def eth_newBlockFilter(self, params: list[Any]) -> str:
        return self.filters.install("blocks")

    def eth_newPendingTransactionFilter(self, params: list[Any]) -> str:
        return self.filters.install("pending")

    def eth_getFilterChanges(self, params: list[Any]) -> list[Any]:
        found = self.filters.get(param(params, 0, "filter id"))
        if found is None:
            raise RpcError(-32000, "filter not found")
        changes = self.watcher.changes(found)
        if found.kind == "pending":
            return [data(h) for h in changes.pending]
        if found.kind == "blocks":
            return [data(self.ledger.header(n).hash) for n in changes.blocks]
        return changed_logs(changes.removed, changes.logs)

    def eth_getFilterLogs(self, params: list[Any]) -> list[dict[str, Any]]:
        found = self.filters.get(param(params, 0, "filter id"))
        if found is None:
            raise RpcError(-32000, "filter not found")
        if found.kind != "logs" or found.criteria is None:
            raise RpcError(-32000, "filter is not a log filter")
        logs = self.ledger.logs(found.criteria, *self.ledger.log_range(found.criteria))
        return [log_json(receipt, i) for receipt, i in logs]

    def eth_uninstallFilter(self, params: list[Any]) -> bool:
        return self.filters.uninstall(param(params, 0, "filter id"))

    # -- the DAG ---------------------------------------------------------------------------

    def _dag(self) -> DagView:
        if self.dag is None:
            raise RpcError(-32601, "DAG methods are not served by this gateway")
        return self.dag

    def dag_getTips(self, params: list[Any]) -> list[str]:
        return [data(t) for t in self._dag().tips()]

    def dag_getBlock(self, params: list[Any]) -> dict[str, Any] | None:
        found = self._dag().block(parse_data(param(params, 0, "hash"), "hash", 32))
        return None if found is None else camel(found)

    def dag_getVirtualChain(self, params: list[Any]) -> list[dict[str, Any]]:
        count = min(_count(param(params, 0, "limit", "0x64"), "limit"), 10_000)
        return [
            {"hash": data(c["hash"]), "blueScore": qty(c["blue_score"]), "final": c["final"]}
            for c in self._dag().virtual_chain(count)
        ]


class JsonRpc:
    """Framing: a request body in, a response document out."""

    def __init__(self, methods: Methods) -> None:
        self.methods = methods
        self.table = methods.table()

    async def handle(self, body: bytes) -> Any:
        """A response document for a request body (None for notification-only input)."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return error(None, RpcError(-32700, "parse error: the body is not valid JSON"))
        if isinstance(request, list):
            if not request:
                return error(None, RpcError(-32600, "invalid request: empty batch"))
            if len(request) > MAX_BATCH:
                message = f"invalid request: batch of {len(request)} exceeds {MAX_BATCH}"
                return error(None, RpcError(-32600, message))
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
            return error(
                request.get("id") if isinstance(request, dict) else None,
                RpcError(-32600, "invalid request: need jsonrpc 2.0 and a method"),
            )
        ident = request.get("id")
        params = request.get("params", [])
        if not isinstance(params, list):
            return error(ident, RpcError(-32602, "params must be an array"))
        try:
            result = await self.run(request["method"], params)
        except RpcError as exc:
            return error(ident, exc) if "id" in request else None
        if "id" not in request:
            return None  # a notification
        return {"jsonrpc": "2.0", "id": ident, "result": result}

    async def run(self, name: str, params: list[Any]) -> Any:
        """The result of one method, or its error as an `RpcError`."""
        method = self.table.get(name)
        if method is None:
            raise RpcError(-32601, f"the method {name} does not exist/is not available")
        try:
            result = method(params)
            if asyncio.iscoroutine(result):
                result = await result
        except BadParam as exc:
            raise RpcError(-32602, str(exc)) from None
        except QueryError as exc:
            payload = data(exc.data) if exc.data is not None else None
            raise RpcError(CODES[exc.kind], exc.message, payload) from None
        except LedgerNotReady as exc:
            raise RpcError(-32000, str(exc)) from None
        return result


def error(ident: Any, exc: RpcError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.data is not None:
        body["data"] = exc.data
    return {"jsonrpc": "2.0", "id": ident, "error": body}
