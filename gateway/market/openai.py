"""The OpenAI-compatible endpoints: `/v1/completions` and `/v1/chat/completions`.

A completion is a job (`gateway.market.service.JobService`) whose answer is the node's
signed result, returned once it is on the log (verification and payment follow
asynchronously). With `stream: true` the job asks its node for its tokens as it generates
them (`lattice.jobs.tokens`); they are sent as server-sent events as they arrive, and the
stream ends with the signed result's finish reason. A node's signed failure (it could not
run the job, e.g. over its memory budget: `processors.verifier.core.failure_of`) is a 400
with the node's error code and message; the job is refunded.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

from fastapi import Depends
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.market.models import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIRequest,
    TextCompletion,
)
from gateway.market.service import JobOrder, JobService, MarketError
from processors.market.lifecycle import Job
from processors.verifier.core import failure_of
from schemas.events import JobResult, JobSubmitted

DEFAULT_MAX_TOKENS = 16


def error_response(exc: MarketError) -> JSONResponse:
    body = {"error": {"code": exc.code, "message": exc.message, "type": exc.code}}
    return JSONResponse(body, status_code=exc.status)


#: `Authorization: Bearer lk_...`; the job service says what is wrong with a missing one.
API_KEY = HTTPBearer(auto_error=False, description="an API key: lk_ and 64 hex digits")


def authorization(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(API_KEY)],
) -> str:
    return "" if credentials is None else f"Bearer {credentials.credentials}"


Authorization = Annotated[str, Depends(authorization)]


def _payload(body: OpenAIRequest) -> dict[str, Any]:
    """The generation request a completion body asks for."""
    payload: dict[str, Any]
    if isinstance(body, ChatCompletionRequest):
        # An assistant's message that only called tools has no content: nothing to read.
        messages = [{"role": m.role, "content": m.content or ""} for m in body.messages]
        payload = {"messages": messages}
    else:
        assert isinstance(body, CompletionRequest)
        payload = {"prompt": body.prompt}
    payload["max_tokens"] = body.max_tokens or body.max_completion_tokens or DEFAULT_MAX_TOKENS
    return payload


def _usage(document: dict[str, Any]) -> dict[str, int]:
    prompt, completion = document["prompt_tokens"], len(document["token_ids"])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _generation(result: JobResult) -> dict[str, Any]:
    """A result's generation document; MarketError for a node's signed failure."""
    failure = failure_of(result)
    if failure is not None:
        raise MarketError(
            400, failure["code"], f"the node could not run the job: {failure['message']}"
        )
    document: dict[str, Any] = json.loads(result.output or b"{}")
    return document


def _completion(job: Job, model: str, chat: bool) -> dict[str, Any]:
    assert job.submitted is not None
    document = _generation(job.results[0])
    finish = document["finish_reason"]
    if chat:
        message = {"role": "assistant", "content": document["text"]}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": document["text"], "finish_reason": finish, "logprobs": None}
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + job.job_id.hex(),
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
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
            order = JobOrder(body.model, _payload(body), stream=body.stream)
            if order.stream:
                record = await self.jobs.start(authorization, order)
                return self._streamed(record, body.model, chat)
            job = await self.jobs.submit(authorization, order)
            return _completion(job, body.model, chat)
        except MarketError as exc:
            return error_response(exc)

    def _streamed(self, record: JobSubmitted, model: str, chat: bool) -> StreamingResponse:
        ident = ("chatcmpl-" if chat else "cmpl-") + record.job_id.hex()
        timeout = self.jobs.settings.job_deadline_ms / 1000 + 5
        pieces = _live(self.jobs, record, timeout)
        return StreamingResponse(
            _events(ident, int(time.time()), model, pieces, chat), media_type="text/event-stream"
        )


def _moved(seen: int, tokens: list[Any], job: Job) -> bool:
    """Whether a streamed job has news: more tokens, a result, or its expiry."""
    return len(tokens) > seen or bool(job.results) or job.state == "expired"


async def _live(
    jobs: JobService, record: JobSubmitted, timeout: float
) -> AsyncIterator[tuple[str, str | None]]:
    """(text, finish reason) pieces of a streamed job as the node produces them: tokens
    from the first node that streams, then whatever its signed result adds, then the
    finish reason. Raises MarketError when no result comes in time."""
    market = jobs.market
    job_id = record.job_id
    tokens = market.tokens.setdefault(job_id, [])
    node: bytes | None = None
    seen, text = 0, ""
    while True:
        job = await market.wait(job_id, partial(_moved, seen, tokens), timeout)
        if job is None:
            break
        with market.lock:
            fresh, seen = tokens[seen:], len(tokens)
            results = list(job.results)
        for piece in fresh:
            node = node or piece.node
            if piece.node == node and piece.text:
                text += piece.text
                yield piece.text, None
        answer = next((r for r in results if node is None or r.node == node), None)
        if answer is not None:
            document = _generation(answer)
            if document["text"].startswith(text) and len(document["text"]) > len(text):
                yield document["text"][len(text) :], None
            yield "", document["finish_reason"]
            return
        if job.state == "expired":
            break
    raise MarketError(504, "job_expired", f"no node answered job 0x{job_id.hex()} in time")


async def _events(
    ident: str,
    created: int,
    model: str,
    pieces: AsyncIterator[tuple[str, str | None]],
    chat: bool,
) -> AsyncIterator[str]:
    kind = "chat.completion.chunk" if chat else "text_completion"
    if chat:
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        yield _sse(ident, kind, created, model, first)
    try:
        async for piece, finish in pieces:
            if chat:
                delta = {"content": piece} if piece or finish is None else {}
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece, "finish_reason": finish}
            yield _sse(ident, kind, created, model, choice)
    except MarketError as exc:
        error = {"error": {"code": exc.code, "message": exc.message, "type": exc.code}}
        yield f"data: {json.dumps(error)}\n\n"
    yield "data: [DONE]\n\n"


def _sse(ident: str, kind: str, created: int, model: str, choice: dict[str, Any]) -> str:
    chunk = {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice]}
    return f"data: {json.dumps(chunk)}\n\n"
