"""JSON-RPC methods of the accounts a node signs for (`gateway.devaccounts`): listing,
sending, signing transactions, messages and typed data."""

from __future__ import annotations

from typing import Any

from gateway.devaccounts import DevAccounts, UnknownAccount, transaction_fields
from gateway.formats import data, parse_data
from gateway.intake import TransactionIntake
from gateway.jsonrpc import RpcError, param, submit
from gateway.ledger import LedgerQueries


class AccountMethods:
    def __init__(
        self,
        accounts: DevAccounts,
        ledger: LedgerQueries,
        intake: TransactionIntake,
        chain_id: int,
    ) -> None:
        self.accounts = accounts
        self.ledger = ledger
        self.intake = intake
        self.chain_id = chain_id

    def eth_accounts(self, params: list[Any]) -> list[str]:
        return [data(a) for a in self.accounts.addresses()]

    def _signed(self, request: Any) -> bytes:
        sender = request.get("from") if isinstance(request, dict) else None
        nonce = None
        if isinstance(sender, str):
            who = parse_data(sender, "from", 20)
            nonce = self.intake.pending_nonce(who, self.ledger.nonce(who))
        fields = transaction_fields(request, self.ledger, self.chain_id, nonce)
        try:
            return self.accounts.sign_transaction(fields)
        except UnknownAccount as exc:
            raise RpcError(-32000, str(exc)) from None

    async def eth_sendTransaction(self, params: list[Any]) -> str:
        return await submit(self.intake, self._signed(param(params, 0, "transaction")))

    def eth_signTransaction(self, params: list[Any]) -> str:
        return data(self._signed(param(params, 0, "transaction")))

    def _sign(self, address: Any, message: Any) -> str:
        who = parse_data(address, "address", 20)
        try:
            return data(self.accounts.sign_message(who, parse_data(message, "message")))
        except UnknownAccount as exc:
            raise RpcError(-32000, str(exc)) from None

    def eth_sign(self, params: list[Any]) -> str:
        return self._sign(param(params, 0, "address"), param(params, 1, "message"))

    def personal_sign(self, params: list[Any]) -> str:
        return self._sign(param(params, 1, "address"), param(params, 0, "message"))

    def eth_signTypedData_v4(self, params: list[Any]) -> str:
        who = parse_data(param(params, 0, "address"), "address", 20)
        try:
            return data(self.accounts.sign_typed_data(who, param(params, 1, "typed data")))
        except UnknownAccount as exc:
            raise RpcError(-32000, str(exc)) from None
