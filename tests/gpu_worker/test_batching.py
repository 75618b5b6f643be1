"""A worker runs the generations one poll brings as one batch, on the real tiny GPT-2:
each job answered once, as it would be alone, and verified. (The runtime's handing a
poll over at once is tested with the runtime: tests/processors/test_runtime.py.)"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu_worker.processor import ASSIGNED, RESULTS, TOKENS, Worker
from processors.compute.generation import Sampling
from processors.compute.models import import_model
from processors.market.content import Blockstore
from processors.state import RocksStore
from processors.verifier.core import GENERATION_SCHEME, check_generation, check_signature
from schemas.events import JobResult
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Record
from streams.settings import Settings
from streams.topics import hex_key
from tests import market_events

pytestmark = pytest.mark.broker
KEY = b"\x52" * 32


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, [ASSIGNED, RESULTS, TOKENS])
        yield broker


def assignments(
    worker: Worker, cid: str, requests: Sequence[dict[str, Any]]
) -> tuple[dict[bytes, Any], list[Record[Any]]]:
    """Each request as a job of the model `cid` assigned to `worker` (job ids 0, 1, ...),
    and the records of those assignments at offsets 0, 1, ..."""
    lease = int(time.time() * 1000) + 60_000
    jobs, records = {}, []
    for n, request in enumerate(requests):
        job_id = n.to_bytes(32, "big")
        job = dataclasses.replace(
            market_events.submitted(job_id, deadline_ms=lease),
            params={"manifest_cid": cid},
            input=json.dumps(request).encode(),
        )
        jobs[job_id] = job
        assigned = dataclasses.replace(
            market_events.assigned(job_id, 0, [worker.address]), job=job, lease_expires_ms=lease
        )
        records.append(Record(ASSIGNED.name, 0, n, 0, hex_key(job_id), assigned, b""))
    return jobs, records


def test_one_polls_generations_run_as_a_batch_each_answered_as_alone(
    own_broker: EmbeddedBroker, tiny_gpt2: Path, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    worker = Worker(settings, own_broker.bootstrap, KEY, None)
    cid = import_model(tiny_gpt2, "g", Blockstore(worker.work / "blockstore")).cid
    model, _ = worker.models.load(cid)
    batches: list[int] = []
    run_together = model.generate_together

    def counted(requests: Sequence[dict[str, Any]], job_ids: Sequence[bytes]) -> Any:
        batches.append(len(requests))
        return run_together(requests, job_ids)

    model.generate_together = counted  # type: ignore[method-assign]
    requests: list[dict[str, Any]] = [
        {"prompt": "the quick brown fox", "max_tokens": 8},
        {"prompt": "the quick brown fox", "max_tokens": 4, "temperature": 0.9},
        {"prompt": "the quick brown fox", "max_tokens": 6, "temperature": 1.2, "top_p": 0.9},
        {"prompt": "the quick brown fox", "max_tokens": 5, "n": 2},  # alone: two choices
        {"prompt": "a", "max_tokens": 3},  # another prompt length: padded in the batch
    ]
    jobs, records = assignments(worker, cid, requests)
    state = RocksStore(tmp_path / "state")
    try:
        answers = worker.handle_all(records, state)
    finally:
        state.close()
        worker.producer.close()
    events = [output.event for outputs in answers for output in outputs]
    results = [event for event in events if isinstance(event, JobResult)]
    assert len(results) == len(events)
    assert batches == [4]
    answered = {r.job_id: r for r in results}
    assert len(answered) == len(requests) == len(results)
    assert [r.cause.offset for r in results if r.cause] == list(range(len(requests)))
    for job_id, result in answered.items():
        request = json.loads(jobs[job_id].input or b"")
        alone = model.generate(request, None, job_id)
        assert result.output == alone.output()
        assert result.fingerprint_scheme == GENERATION_SCHEME
        assert check_signature(result, settings.chain_id).passed
        prompt = model.prompt(request)
        claimed = json.loads(result.output or b"")
        choices = claimed.get("choices") or [claimed]
        logits = [model.continuation(prompt, c["token_ids"]) for c in choices]
        check = check_generation(
            result.output or b"",
            result.fingerprint,
            logits,
            len(prompt),
            model.eos_token_id,
            Sampling.of(request, job_id),
            model.decode,
        )
        assert check.passed, check.detail


def test_one_polls_encoder_jobs_share_a_pass_and_a_bad_input_fails_alone(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    from processors.verifier.core import EMBEDDING_SCHEME, FAILED_SCHEME, failure_of
    from tests.tiny_models import build_tiny_sentence_encoder

    settings = Settings(data_dir=tmp_path)
    worker = Worker(settings, own_broker.bootstrap, KEY, None)
    directory = build_tiny_sentence_encoder(tmp_path / "encoder")
    cid = import_model(directory, "e", Blockstore(worker.work / "blockstore")).cid
    model, _ = worker.models.load(cid)
    passes: list[int] = []
    encode_together = model.encode_together

    def counted(requests: Sequence[dict[str, Any]]) -> Any:
        passes.append(len(requests))
        return encode_together(requests)

    model.encode_together = counted  # type: ignore[method-assign]
    good: list[dict[str, Any]] = [{"input": "hi"}, {"input": ["a", "longer text"]}]
    state = RocksStore(tmp_path / "state")
    try:
        shared = worker.handle_all(assignments(worker, cid, good)[1], state)
        mixed = worker.handle_all(assignments(worker, cid, [*good, {"input": 7}])[1], state)
    finally:
        state.close()
        worker.producer.close()
    assert passes == [2, 3]  # the second batch failed on the bad input, then ran one by one
    for answers in (shared, mixed):
        events = [o.event for outputs in answers for o in outputs]
        results = [r for r in events if isinstance(r, JobResult)]
        assert len(results) == len(events)
        for request, result in zip(good, results, strict=False):
            assert result.fingerprint_scheme == EMBEDDING_SCHEME
            _, alone = model.embed(request)
            claimed = np.asarray(json.loads(result.output or b"")["embeddings"])
            np.testing.assert_allclose(claimed, alone, atol=1e-5)
    bad = mixed[2][0].event
    assert isinstance(bad, JobResult) and bad.fingerprint_scheme == FAILED_SCHEME
    failure = failure_of(bad)
    assert failure is not None and "input" in failure["message"]


def test_a_batch_is_billed_once_split_by_each_jobs_work() -> None:
    from gpu_worker.processor import batch_shares, work_of

    assert batch_shares(10, [1, 1, 2]) == [2, 2, 5]
    assert batch_shares(7, [0, 0]) == [3, 3]
    assert sum(batch_shares(1_000, [13, 7, 91])) <= 1_000
    generated = json.dumps({"prompt_tokens": 4, "token_ids": [1, 2, 3]}).encode()
    choices = json.dumps({"prompt_tokens": 4, "choices": [{"token_ids": [1]}] * 2}).encode()
    encoded = json.dumps({"prompt_tokens": 9, "embeddings": [[0.5]]}).encode()
    assert [work_of(d) for d in (generated, choices, encoded)] == [7, 6, 9]
