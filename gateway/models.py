"""The typed shapes of the gateway's own routes (`gateway.app`, `gateway.rest`), as the
served OpenAPI document (`/openapi.json`) shows them.

Response models forbid fields they do not declare, so a route that starts answering a key
nobody documented fails (500, which the schemathesis run in
`tests/gateway/test_openapi_schemathesis.py` reports) rather than drift from its schema.
Fields that the wire omits, rather than sending as null, are `Absent`: optional, and not
nullable in the schema. The ledger's shapes are those of `gateway.formats`, which JSON-RPC
answers too; the routes validate those dictionaries against these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias, TypeVar

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.json_schema import SkipJsonSchema

T = TypeVar("T")
#: A key that is left out when it does not apply (never sent as null).
Absent: TypeAlias = T | SkipJsonSchema[None]

Quantity = Annotated[str, Field(pattern=r"^0x(0|[1-9a-f][0-9a-f]*)$", examples=["0x1a"])]
Data = Annotated[str, Field(pattern=r"^0x([0-9a-f]{2})*$")]
Hash = Annotated[str, Field(pattern=r"^0x[0-9a-f]{64}$")]
Address = Annotated[str, Field(pattern=r"^0x[0-9a-f]{40}$")]
Decimal = Annotated[str, Field(pattern=r"^[0-9]+$", description="a non-negative integer")]


#: A body of raw bytes (a tar stream, a content block).
BINARY = {"schema": {"type": "string", "format": "binary"}}


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


def path(description: str, pattern: str) -> Any:
    """A path parameter whose valid forms the document shows; the route itself answers
    any other with its 400 (a `pattern` FastAPI enforced would answer 422)."""
    return Path(description=description, json_schema_extra={"pattern": pattern})


BlockId = Annotated[
    str,
    path(
        "a tag, a decimal or 0x number, or a block hash",
        r"^(latest|earliest|pending|safe|finalized|[0-9]+|0x[0-9a-fA-F]+)$",
    ),
]
TxHash = Annotated[str, path("a transaction hash", r"^0x[0-9a-fA-F]{64}$")]
AddressPath = Annotated[str, path("an address", r"^0x[0-9a-fA-F]{40}$")]


# -- errors -----------------------------------------------------------------------------------


class ErrorDetail(Answer):
    code: str = Field(examples=["not_found"])
    message: str


class ErrorBody(Answer):
    """What every REST route answers when it cannot: a machine code and a message."""

    error: ErrorDetail


def errors(**described: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for error statuses, each with `ErrorBody`: errors(_404="no such block")."""
    return {
        int(status.lstrip("_")): {"model": ErrorBody, "description": text}
        for status, text in described.items()
    }


# -- operations -------------------------------------------------------------------------------


class Health(Answer):
    status: Literal["ok"]
    live: bool
    ready: bool = Field(description="the ledger answers state reads")
    head: int | None = Field(description="the head block number, once ready")
    reason: Absent[str] = Field(None, description="why not ready yet")
    chain_id: int
    client: str = Field(examples=["lattice/0.1.0"])


class Ready(Answer):
    ready: bool
    head: int | None
    reason: Absent[str] = None


class Network(Answer):
    chain_id: int
    kafka: str | None = Field(description="the Kafka bootstrap servers this node uses")
    client: str


class RpcMethod(Answer):
    name: str = Field(examples=["eth_blockNumber"])
    doc: str = Field(description="the first line of the method's documentation")


class SubmittedTransaction(Answer):
    """A transaction the broker acknowledged on `lattice.tx.submitted`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    hash: Hash
    sender: Address = Field(alias="from")
    nonce: int
    type: int
    topic: str
    partition: int
    offset: int


#: `POST /v1/transactions` takes the raw signed transaction in any of these forms.
RAW_TRANSACTION_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"type": "string", "pattern": "^0x[0-9a-fA-F]*$"},
                    {
                        "type": "object",
                        "properties": {"raw": {"type": "string", "pattern": "^0x[0-9a-fA-F]*$"}},
                        "required": ["raw"],
                    },
                ]
            }
        },
        "text/plain": {"schema": {"type": "string", "pattern": "^0x[0-9a-fA-F]*$"}},
    },
}


class Account(Answer):
    address: Address
    balance: Decimal = Field(description="wei")
    nonce: int
    code_size: int
    block_number: int = Field(description="the block the figures are read at")


# -- the ledger's objects (gateway.formats) ---------------------------------------------------


class Ledger(BaseModel):
    """Keys as execution-apis spells them (`from` is a keyword here)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AccessListEntry(Ledger):
    address: Address
    storageKeys: list[Hash]


class Transaction(Ledger):
    blockHash: Hash
    blockNumber: Quantity
    transactionIndex: Quantity
    hash: Hash
    sender: Address = Field(alias="from")
    to: Address | None
    nonce: Quantity
    gas: Quantity
    value: Quantity
    input: Data
    type: Quantity
    chainId: Quantity | None
    v: Quantity
    r: Quantity
    s: Quantity
    gasPrice: Quantity
    maxFeePerGas: Absent[Quantity] = None
    maxPriorityFeePerGas: Absent[Quantity] = None
    yParity: Absent[Quantity] = None
    accessList: Absent[list[AccessListEntry]] = None


class Log(Ledger):
    address: Address
    topics: list[Hash]
    data: Data
    blockNumber: Quantity
    blockHash: Hash
    transactionHash: Hash
    transactionIndex: Quantity
    logIndex: Quantity
    removed: bool


class Receipt(Ledger):
    transactionHash: Hash
    transactionIndex: Quantity
    blockHash: Hash
    blockNumber: Quantity
    sender: Address = Field(alias="from")
    to: Address | None
    cumulativeGasUsed: Quantity
    gasUsed: Quantity
    effectiveGasPrice: Quantity
    contractAddress: Address | None
    logs: list[Log]
    logsBloom: Data
    status: Quantity
    type: Quantity


class Block(Ledger):
    number: Quantity
    hash: Hash
    parentHash: Hash
    nonce: Data
    sha3Uncles: Hash
    logsBloom: Data
    transactionsRoot: Hash
    stateRoot: Hash
    receiptsRoot: Hash
    miner: Address | None
    difficulty: Quantity
    totalDifficulty: Quantity
    extraData: Data
    size: Quantity
    gasLimit: Quantity
    gasUsed: Quantity
    timestamp: Quantity
    mixHash: Hash
    baseFeePerGas: Quantity
    uncles: list[Hash]
    transactions: list[Hash] | list[Transaction] = Field(
        description="hashes, or with `full=true` the transactions"
    )
    withdrawalsRoot: Absent[Hash] = None
    blobGasUsed: Absent[Quantity] = None
    excessBlobGas: Absent[Quantity] = None
    parentBeaconBlockRoot: Absent[Hash] = None
    requestsHash: Absent[Hash] = None
    withdrawals: Absent[list[Any]] = None


# -- JSON-RPC (`POST /`) ----------------------------------------------------------------------


class JsonRpcRequest(BaseModel):
    jsonrpc: Literal["2.0"]
    method: str = Field(examples=["eth_blockNumber"])
    params: list[Any] = []
    id: int | str | None = Field(None, description="absent for a notification (no answer)")


#: Inline: the route reads its body itself, so no model of it reaches the components.
JSON_RPC_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "description": "a JSON-RPC 2.0 request object, or a batch (array) of them",
                "oneOf": [
                    JsonRpcRequest.model_json_schema(),
                    {"type": "array", "items": JsonRpcRequest.model_json_schema()},
                ],
            }
        }
    },
}


class JsonRpcError(Answer):
    code: int
    message: str
    data: Absent[Any] = None


class JsonRpcResponse(Answer):
    jsonrpc: Literal["2.0"]
    id: Any
    result: Absent[Any] = None
    error: Absent[JsonRpcError] = None


class JsonRpcAnswer(RootModel[JsonRpcResponse | list[JsonRpcResponse]]):
    """One response, or one for each call of a batch that was not a notification."""
