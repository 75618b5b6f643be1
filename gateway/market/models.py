"""The typed shapes of the market's routes and the OpenAI-compatible ones, as the served
OpenAPI document shows them.

The OpenAI requests declare every parameter a node honours; one that would change the
output and is not honoured (penalties, tools, a response format, ...) is refused with a
400 naming it (`gateway.market.openai.refused`), never ignored; a few that change nothing
(`user`, `metadata`, ...) pass. Responses forbid undeclared fields
(`gateway.models.Answer`). The market's records that a job or a node carries are shown as
the Avro record as JSON (bytes as 0x-hex), whose schema is the `.avsc` named beside them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.models import BINARY, Address, Answer, Decimal, Hash, path
from processors.compute.generation import MAX_CHOICES, MAX_STOPS, MAX_TEMPERATURE, MAX_TOP_LOGPROBS
from processors.compute.runtime import MAX_ENCODER_INPUTS

#: A record of the log as JSON: its fields are those of the named Avro schema.
AvroRecord = dict[str, Any]


# -- errors -----------------------------------------------------------------------------------


class MarketErrorDetail(Answer):
    code: str = Field(examples=["model_not_found"])
    message: str
    type: str = Field(description="the same as `code` (OpenAI clients read `type`)")
    param: str | None = Field(None, description="the request parameter at fault")


class MarketErrorBody(Answer):
    """OpenAI's error shape, which its clients turn into their exceptions."""

    error: MarketErrorDetail


def market_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for the market's error statuses, each with `MarketErrorBody`."""
    return {
        status: {"model": MarketErrorBody, "description": MEANINGS[status]} for status in statuses
    }


MEANINGS = {
    400: "bad input",
    401: "no API key, or one no account authorised",
    402: "the account's deposit does not cover the job's maximum price",
    404: "no such model, job or content",
    409: "not (yet) registered on the ledger, or its manifest not uploaded",
    413: "too large",
    503: "the ledger cannot be read",
    504: "no node answered before the job's deadline (it is refunded)",
}
#: What starting a job may answer instead of its result.
JOB_ERRORS = market_errors(400, 401, 402, 404, 413, 503, 504)


JobId = Annotated[str, path("a job id: 32 bytes of hex, 0x optional", r"^(0x)?[0-9a-fA-F]{64}$")]
ModelId = Annotated[
    str, path("a registered model's name", r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}$")
]
Cid = Annotated[str, path("a raw sha2-256 CIDv1, base32", r"^b[a-z2-7]{58}$")]


# -- models and content -----------------------------------------------------------------------


class ModelCard(Answer):
    id: str = Field(description="the model's name", examples=["tiny-gpt2"])
    object: Literal["model"]
    created: int = Field(description="registration time, Unix seconds")
    owned_by: Address
    version: int
    manifest_cid: str
    model_type: str
    task: str | None = Field(
        description="what the model does: text-generation, text2text-generation, embedding, "
        "text-classification, image-classification, zero-shot-image-classification or tensor "
        "(null: manifest not held here)"
    )
    parameter_count: int
    vram_required_bytes: int


class ModelList(Answer):
    object: Literal["list"]
    data: list[ModelCard]


class ModelRegistration(BaseModel):
    transaction_hash: Hash = Field(description="the ModelRegistry transaction")


class RegisteredModel(Answer):
    model: str
    version: int
    manifest_cid: str


class IpfsPeerInfo(Answer):
    peer_id: str = Field(description="the node's IPFS peer id (Qm…)")
    addrs: list[str] = Field(description="multiaddrs other peers dial, with /p2p/<peer id>")


class StoredContent(Answer):
    cid: str
    size: int


#: Content blocks travel as raw bytes, not JSON.
CONTENT_BODY = {"required": True, "content": {"application/octet-stream": BINARY}}


# -- nodes and jobs ---------------------------------------------------------------------------


class NodeInfo(Answer):
    address: Address
    price_wei_per_hour: Decimal
    stake_wei: Decimal
    leaving: bool
    memory_bytes: int
    memory_used_bytes: int
    reputation_bps: int
    jobs_in_flight: int
    last_seen_ms: int
    runtimes: list[str]
    devices: list[AvroRecord] = Field(description="lattice.gpu.GpuDevice records")
    cpu_model: str
    accepted: int
    rejected: int


class NodeList(Answer):
    nodes: list[NodeInfo]


class JobInfo(Answer):
    id: Hash
    state: Literal["submitted", "assigned", "completed", "verified", "settled", "expired"]
    kind: Literal["inference", "training"]
    model: str
    requester: Address
    max_price_wei: Decimal
    deadline_ms: int
    assignments: list[AvroRecord] = Field(description="lattice.jobs.JobAssigned records")
    result: AvroRecord | None = Field(
        description="the first lattice.jobs.JobResult, its output left out (see `output`)"
    )
    result_count: int
    streamed_tokens: int
    output: Any = Field(description="the result's output: its JSON, or {bytes: n} when not JSON")
    verdicts: list[AvroRecord] = Field(description="lattice.jobs.JobVerdict records")
    settlements: list[AvroRecord] = Field(description="lattice.jobs.JobSettled records")


class JobList(Answer):
    jobs: list[JobInfo]


Positive = Annotated[int, Field(gt=0)]


class JobRequest(BaseModel):
    """An inference job, or with `kind: training` a training job, paid by the API key's
    account. Integers may also be sent as decimal strings (wei outgrow JSON numbers)."""

    model: str
    input: dict[str, Any] = Field(default_factory=dict, description="the model's input")
    kind: Literal["inference", "training"] = "inference"
    max_price_wei: Positive | None = Field(None, description="default: the gateway's")
    timeout_ms: Positive | None = None
    redundancy: Literal[1, 2] = Field(1, description="2: run on two nodes, results compared")
    dataset: str | None = Field(None, description="training: the text to train on")
    epochs: int = Field(1, ge=1, le=1_000)
    batch_size: int = Field(8, ge=1, le=4_096)
    learning_rate: float = Field(0.05, gt=0, allow_inf_nan=False)
    seq_len: int = Field(32, ge=1, le=65_536)


# -- OpenAI-compatible completions ------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="a last chunk with the usage, no choices")


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: Positive | None = None
    max_completion_tokens: Positive | None = None
    stream: bool = Field(False, description="answer server-sent events as tokens come")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(
        None, ge=0, le=MAX_TEMPERATURE, description="default 1; 0 is greedy"
    )
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_CHOICES, description="choices (not streamed)")
    seed: int | None = Field(None, description="the same seed and request, the same text")
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOPS} sequences")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(examples=["user"])
    content: str | list[TextPart | dict[str, Any]] | None = Field(
        None, description="text, or a list of parts of which text parts are read"
    )


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = Field(None, description="each token's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(OpenAIRequest):
    prompt: str = ""
    logprobs: int | None = Field(
        None, ge=0, le=5, description="log-probabilities of this many likeliest tokens"
    )


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_ENCODER_INPUTS)] = Field(
        description=f"a text or up to {MAX_ENCODER_INPUTS} texts"
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector's little-endian float32 bytes"
    )
    dimensions: Positive | None = Field(None, description="only the model's own")


class Embedding(Answer):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(Answer):
    prompt_tokens: int
    total_tokens: int


class Usage(Answer):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class JobRef(Answer):
    job_id: Hash


class AssistantMessage(Answer):
    role: Literal["assistant"]
    content: str


class TopLogprob(Answer):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Answer):
    content: list[TokenLogprob]
    refusal: None = None


class ChatChoice(Answer):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: ChatLogprobs | None = None


class ChatCompletion(Answer):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    lattice: JobRef


class CompletionLogprobs(Answer):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(Answer):
    index: int
    text: str
    finish_reason: str
    logprobs: CompletionLogprobs | None


class TextCompletion(Answer):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage
    lattice: JobRef


class EmbeddingList(Answer):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    lattice: JobRef


def streamed(description: str) -> dict[int | str, dict[str, Any]]:
    """The 200 of a completion: JSON, or with `stream: true` server-sent events."""
    events = {"schema": {"type": "string", "description": description}}
    return {200: {"content": {"text/event-stream": events}}}
