"""geth's `debug_trace*` methods over `gateway.tracing`: a transaction, a call, or every
transaction of a block, traced by the struct logger, `callTracer` or `prestateTracer`."""

from __future__ import annotations

from typing import Any

from eth.abc import BlockAPI

from gateway.filters import block_ref
from gateway.formats import data, parse_data
from gateway.jsonrpc import RpcError, call_of, param
from gateway.ledger import LedgerQueries
from gateway.tracing import TraceConfig, replay, result, run
from processors.execution.transactions import ChainRules


class DebugMethods:
    def __init__(self, ledger: LedgerQueries) -> None:
        self.ledger = ledger

    def _chain(self) -> Any:
        """A scratch copy of the chain: a trace's writes go nowhere."""
        rules = ChainRules(self.ledger.view.chain_id, block_gas_limit=self.ledger.block_gas_limit)
        return self.ledger.view.scratch_ledger(rules).chain

    def _trace(self, block: BlockAPI, index: int, config: TraceConfig) -> Any:
        return result(replay(self._chain(), block, index, config), block.transactions[index])

    def debug_traceTransaction(self, params: list[Any]) -> Any:
        tx_hash = parse_data(param(params, 0, "hash"), "hash", 32)
        config = TraceConfig.of(param(params, 1, "trace options", None))
        found = self.ledger.locate(tx_hash)
        if found is None:
            raise RpcError(-32000, "transaction not found")
        return self._trace(*found, config)

    def _block(self, block: BlockAPI, spec: Any) -> list[dict[str, Any]]:
        config = TraceConfig.of(spec)
        return [
            {"txHash": data(tx.hash), "result": self._trace(block, i, config)}
            for i, tx in enumerate(block.transactions)
        ]

    def debug_traceBlockByNumber(self, params: list[Any]) -> list[dict[str, Any]]:
        block = self.ledger.block(block_ref(param(params, 0, "block")))
        return self._block(block, param(params, 1, "trace options", None))

    def debug_traceBlockByHash(self, params: list[Any]) -> list[dict[str, Any]]:
        block = self.ledger.block(parse_data(param(params, 0, "hash"), "hash", 32))
        return self._block(block, param(params, 1, "trace options", None))

    def debug_traceCall(self, params: list[Any]) -> Any:
        """A call traced on top of a block, as if it were the next block's only
        transaction (at a zero gas price, as `eth_call`)."""
        call = call_of(param(params, 0, "call"))
        config = TraceConfig.of(param(params, 2, "trace options", None))
        header = self.ledger.header(block_ref(param(params, 1, "block", "latest")))
        tx = self.ledger.spoof(call, header)
        return result(run(self._chain(), header.hash, header, [tx], config, free=True), tx)
