"""The OpenAI-compatible endpoints: `/v1/completions`, `/v1/chat/completions` and
`/v1/embeddings`.

A completion is a job (`gateway.market.service.JobService`) whose answer is the node's
signed result, returned once it is on the log (verification and payment follow
asynchronously). With `stream: true` the job asks its node for its tokens as it generates
them (`lattice.jobs.tokens`); they are sent as server-sent events as they arrive, and the
stream ends with the signed result's finish reason. A node's signed failure (it could not
run the job, e.g. over its memory budget: `processors.verifier.core.failure_of`) is a 400
with the node's error code and message; the job is refunded.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import Depends
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from gateway.market.models import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    OpenAIRequest,
    TextCompletion,
    TextPart,
)
from gateway.market.service import JobOrder, JobService, MarketError
from processors.compute.generation import choices_of
from processors.compute.models import EMBEDDING, GENERATIVE
from processors.market.lifecycle import Job
from processors.verifier.core import failure_of
from schemas.events import JobResult, JobSubmitted

DEFAULT_MAX_TOKENS = 16


def error_response(exc: MarketError) -> JSONResponse:
    return JSONResponse({"error": exc.detail()}, status_code=exc.status)


#: `Authorization: Bearer lk_...`; the job service says what is wrong with a missing one.
API_KEY = HTTPBearer(auto_error=False, description="an API key: lk_ and 64 hex digits")


def authorization(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(API_KEY)],
) -> str:
    return "" if credentials is None else f"Bearer {credentials.credentials}"


Authorization = Annotated[str, Depends(authorization)]


#: Parameters that change nothing a node produces: accepted and left aside.
INERT = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})
#: Parameters at these values change nothing either (OpenAI's defaults).
NEUTRAL: dict[str, Any] = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
    "echo": False,
    "best_of": 1,
    "response_format": {"type": "text"},
    "tools": [],
    "functions": [],
    "tool_choice": "none",
    "suffix": "",
}


def refused_extra(body: BaseModel) -> MarketError | None:
    """The 400 for the first parameter a request model does not declare that would change
    the output (None: there is none)."""
    for name, value in (body.model_extra or {}).items():
        if name in INERT or (name in NEUTRAL and value in (NEUTRAL[name], None)):
            continue
        return _unsupported(
            name, f"{name}: not supported by this node (it would change the output)"
        )
    return None


def refused(body: OpenAIRequest) -> MarketError | None:
    """The 400 for the first parameter that would change the output and is not honoured
    (None: every parameter is one a node honours, or changes nothing)."""
    extra = refused_extra(body)
    if extra is not None:
        return extra
    if isinstance(body, ChatCompletionRequest):
        if body.top_logprobs and not body.logprobs:
            return _unsupported("top_logprobs", "top_logprobs: needs logprobs: true")
        for i, message in enumerate(body.messages):
            for j, part in enumerate(message.content if isinstance(message.content, list) else []):
                if not isinstance(part, TextPart):
                    kind = part.get("type", "?")
                    return _unsupported(
                        "messages",
                        f"messages[{i}].content[{j}]: {kind} parts are not read by text models",
                    )
    return None


def _unsupported(param: str, message: str) -> MarketError:
    return MarketError(400, "unsupported_parameter", message, param=param)


def _text_of(content: str | list[Any] | None) -> str:
    """A message's text: its text parts joined by newlines (as vLLM joins them)."""
    if isinstance(content, list):
        return "\n".join(part.text for part in content if isinstance(part, TextPart))
    # An assistant's message that only called tools has no content: nothing to read.
    return content or ""


def _payload(body: OpenAIRequest) -> dict[str, Any]:
    """The job input a completion body asks for: the prompt and every sampling field."""
    payload: dict[str, Any]
    if isinstance(body, ChatCompletionRequest):
        messages = [{"role": m.role, "content": _text_of(m.content)} for m in body.messages]
        payload = {"messages": messages}
        logprobs, top = bool(body.logprobs), body.top_logprobs or 0
    else:
        assert isinstance(body, CompletionRequest)
        payload = {"prompt": body.prompt}
        logprobs, top = body.logprobs is not None, body.logprobs or 0
    payload["max_tokens"] = body.max_tokens or body.max_completion_tokens or DEFAULT_MAX_TOKENS
    # OpenAI samples at temperature 1 unless told otherwise; the job records it.
    payload["temperature"] = 1.0 if body.temperature is None else body.temperature
    for name in ("top_p", "n", "seed", "stop"):
        if getattr(body, name) is not None:
            payload[name] = getattr(body, name)
    if logprobs:
        payload.update(logprobs=True, top_logprobs=top)
    return payload


def _usage(document: dict[str, Any]) -> dict[str, int]:
    prompt = document["prompt_tokens"]
    completion = sum(len(choice["token_ids"]) for choice in choices_of(document))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _document_of(result: JobResult) -> dict[str, Any]:
    """A result's output document; MarketError for a node's signed failure."""
    failure = failure_of(result)
    if failure is not None:
        raise MarketError(
            400, failure["code"], f"the node could not run the job: {failure['message']}"
        )
    document: dict[str, Any] = json.loads(result.output or b"{}")
    return document


def _token_bytes(text: str) -> list[int]:
    return list(text.encode())


def _chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    def top(entry: dict[str, Any]) -> dict[str, Any]:
        return {
            "token": entry["token"],
            "logprob": entry["logprob"],
            "bytes": _token_bytes(entry["token"]),
        }

    content = [{**top(e), "top_logprobs": [top(t) for t in e["top"]]} for e in entries]
    return {"content": content, "refusal": None}


def _completion_logprobs(entries: list[dict[str, Any]], at: int = 0) -> dict[str, Any]:
    """Completions' logprobs shape; `at`: where the first token's text starts."""
    offsets = []
    for entry in entries:
        offsets.append(at)
        at += len(entry["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top"]} for e in entries],
        "text_offset": offsets,
    }


def _choice(index: int, choice: dict[str, Any], chat: bool) -> dict[str, Any]:
    entries = choice.get("logprobs")
    finish = choice["finish_reason"]
    if chat:
        message = {"role": "assistant", "content": choice["text"]}
        logprobs = None if entries is None else _chat_logprobs(entries)
        return {"index": index, "message": message, "finish_reason": finish, "logprobs": logprobs}
    logprobs = None if entries is None else _completion_logprobs(entries)
    return {"index": index, "text": choice["text"], "finish_reason": finish, "logprobs": logprobs}


def _completion(job: Job, model: str, chat: bool) -> dict[str, Any]:
    assert job.submitted is not None
    document = _document_of(job.results[0])
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + job.job_id.hex(),
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(i, c, chat) for i, c in enumerate(choices_of(document))],
        "usage": _usage(document),
        "lattice": {"job_id": "0x" + job.job_id.hex()},
    }


class Completions:
    """The two endpoints, over the job service."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    async def chat(
        self, body: ChatCompletionRequest, key: Authorization
    ) -> ChatCompletion | Response:
        """A chat completion by a node running the model (OpenAI's shape)."""
        answer = await self.complete(body, key, chat=True)
        if isinstance(answer, Response):
            return answer
        return ChatCompletion.model_validate(answer)

    async def text(self, body: CompletionRequest, key: Authorization) -> TextCompletion | Response:
        """A text completion by a node running the model (OpenAI's shape)."""
        answer = await self.complete(body, key, chat=False)
        if isinstance(answer, Response):
            return answer
        return TextCompletion.model_validate(answer)

    async def complete(
        self, body: OpenAIRequest, authorization: str, chat: bool
    ) -> dict[str, Any] | Response:
        try:
            refusal = refused(body)
            if refusal is not None:
                raise refusal
            order = JobOrder(body.model, _payload(body), stream=body.stream, tasks=GENERATIVE)
            if order.stream:
                record = await self.jobs.start(authorization, order)
                usage = body.stream_options is not None and body.stream_options.include_usage
                logprobs = bool(order.payload.get("logprobs"))
                stream = Stream(body.model, chat, usage, body.n or 1, logprobs)
                return self._streamed(record, stream)
            job = await self.jobs.submit(authorization, order)
            return _completion(job, body.model, chat)
        except MarketError as exc:
            return error_response(exc)

    def _streamed(self, record: JobSubmitted, stream: Stream) -> StreamingResponse:
        ident = ("chatcmpl-" if stream.chat else "cmpl-") + record.job_id.hex()
        timeout = self.jobs.settings.job_deadline_ms / 1000 + 5
        pieces = _live(self.jobs, record, timeout)
        events = _events(Chunks(ident, int(time.time()), stream), pieces)
        return StreamingResponse(events, media_type="text/event-stream")


class Embeddings:
    """`/v1/embeddings` over the job service: one job embeds every text of a request."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    async def create(self, body: EmbeddingRequest, key: Authorization) -> EmbeddingList | Response:
        """Sentence embeddings by a node running the model (OpenAI's shape)."""
        try:
            refusal = refused_extra(body) or self._dimensions_refused(body)
            if refusal is not None:
                raise refusal
            texts = [body.input] if isinstance(body.input, str) else list(body.input)
            order = JobOrder(body.model, {"input": texts}, tasks=(EMBEDDING,))
            job = await self.jobs.submit(key, order)
            document = _document_of(job.results[0])
        except MarketError as exc:
            return error_response(exc)
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
            for i, v in enumerate(document["embeddings"])
        ]
        tokens = int(document["prompt_tokens"])
        return EmbeddingList.model_validate(
            {
                "object": "list",
                "data": data,
                "model": body.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "lattice": {"job_id": "0x" + job.job_id.hex()},
            }
        )

    def _dimensions_refused(self, body: EmbeddingRequest) -> MarketError | None:
        if body.dimensions is None:
            return None
        with self.jobs.market.lock:
            registered = self.jobs.market.view.models.get(body.model)
        document = registered and self.jobs.manifest_document(registered.manifest_cid)
        own = document.get("dimensions") if document else None
        if own == body.dimensions:
            return None
        return _unsupported(
            "dimensions", f"dimensions: this model's vectors have {own}; it cannot shorten them"
        )


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


def _moved(seen: int, tokens: list[Any], job: Job) -> bool:
    """Whether a streamed job has news: more tokens, a result, or its expiry."""
    return len(tokens) > seen or bool(job.results) or job.state == "expired"


@dataclass(frozen=True)
class Piece:
    """A streamed piece of one choice: text, the logprob entries of its tokens, and on its
    last piece the finish reason (with the usage on the stream's very last)."""

    choice: int
    text: str = ""
    logprobs: tuple[dict[str, Any], ...] = ()
    finish: str | None = None
    usage: dict[str, int] | None = None


def _entries(raw: str) -> tuple[dict[str, Any], ...]:
    """A token event's logprob entries; what is not well formed is dropped (a stream is
    progress from a node; its signed result, which follows, is what counts)."""
    try:
        entries = json.loads(raw) if raw else []
    except ValueError:
        entries = []
    if not isinstance(entries, list):
        return ()
    return tuple(e for e in entries if isinstance(e, dict) and _well_formed(e))


def _well_formed(entry: dict[str, Any]) -> bool:
    top = entry.get("top")
    return (
        isinstance(entry.get("token"), str)
        and isinstance(entry.get("logprob"), int | float)
        and isinstance(top, list)
        and all(isinstance(t, dict) and _well_formed({**t, "top": []}) for t in top)
    )


async def _live(jobs: JobService, record: JobSubmitted, timeout: float) -> AsyncIterator[Piece]:
    """The pieces of a streamed job as the node produces them: every choice's tokens from
    the first node that streams, then whatever its signed result adds, then each choice's
    finish reason and the usage. Raises MarketError when no result comes in time."""
    market = jobs.market
    job_id = record.job_id
    tokens = market.tokens.setdefault(job_id, [])
    node: bytes | None = None
    seen = 0
    streamed: dict[int, tuple[str, int]] = {}  # choice: text and logprob entries sent
    while True:
        job = await market.wait(job_id, partial(_moved, seen, tokens), timeout)
        if job is None:
            break
        with market.lock:
            fresh, seen = tokens[seen:], len(tokens)
            results = list(job.results)
        for event in fresh:
            node = node or event.node
            entries = _entries(event.logprobs)
            if event.node == node and (event.text or entries):
                text, count = streamed.get(event.choice, ("", 0))
                streamed[event.choice] = (text + event.text, count + len(entries))
                yield Piece(event.choice, event.text, entries)
        answer = next((r for r in results if node is None or r.node == node), None)
        if answer is not None:
            for piece in _rest(_document_of(answer), streamed):
                yield piece
            return
        if job.state == "expired":
            break
    raise MarketError(504, "job_expired", f"no node answered job 0x{job_id.hex()} in time")


def _rest(document: dict[str, Any], streamed: dict[int, tuple[str, int]]) -> list[Piece]:
    """What the signed result adds to what was streamed: each choice's text and logprobs
    not yet sent, then each choice's finish reason, the usage on the last."""
    choices = choices_of(document)
    pieces = []
    for index, choice in enumerate(choices):
        text, count = streamed.get(index, ("", 0))
        rest = choice["text"][len(text) :] if choice["text"].startswith(text) else ""
        entries = tuple((choice.get("logprobs") or [])[count:])
        if rest or entries:
            pieces.append(Piece(index, rest, entries))
    for index, choice in enumerate(choices):
        usage = _usage(document) if index == len(choices) - 1 else None
        pieces.append(Piece(index, finish=choice["finish_reason"], usage=usage))
    return pieces


@dataclass(frozen=True)
class Stream:
    """What a streamed request asked for."""

    model: str
    chat: bool
    usage: bool  # stream_options.include_usage
    n: int
    logprobs: bool


@dataclass(frozen=True)
class Chunks:
    """What every chunk of one stream carries."""

    ident: str
    created: int
    stream: Stream

    def event(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        kind = "chat.completion.chunk" if self.stream.chat else "text_completion"
        chunk: dict[str, Any] = {
            "id": self.ident,
            "object": kind,
            "created": self.created,
            "model": self.stream.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    def choice(self, piece: Piece, at: int) -> dict[str, Any]:
        """A piece as a chunk's choice; `at`: the length of that choice's text before it."""
        entries = list(piece.logprobs)
        asked = self.stream.logprobs and bool(entries)
        if self.stream.chat:
            delta = {"content": piece.text} if piece.text or piece.finish is None else {}
            logprobs = _chat_logprobs(entries) if asked else None
            return {
                "index": piece.choice,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": piece.finish,
            }
        logprobs = _completion_logprobs(entries, at) if asked else None
        return {
            "index": piece.choice,
            "text": piece.text,
            "logprobs": logprobs,
            "finish_reason": piece.finish,
        }


async def _events(chunks: Chunks, pieces: AsyncIterator[Piece]) -> AsyncIterator[str]:
    """The server-sent events of a stream; with `stream_options.include_usage`, a last
    chunk with no choices and the usage, as OpenAI sends it."""
    if chunks.stream.chat:
        for index in range(chunks.stream.n):
            role = {"role": "assistant", "content": ""}
            yield chunks.event([{"index": index, "delta": role, "finish_reason": None}])
    written: dict[int, int] = {}
    try:
        async for piece in pieces:
            yield chunks.event([chunks.choice(piece, written.get(piece.choice, 0))])
            written[piece.choice] = written.get(piece.choice, 0) + len(piece.text)
            if piece.usage is not None and chunks.stream.usage:
                yield chunks.event([], piece.usage)
    except MarketError as exc:
        yield f"data: {json.dumps({'error': exc.detail()})}\n\n"
    yield "data: [DONE]\n\n"
