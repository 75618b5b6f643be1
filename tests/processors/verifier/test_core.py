"""Verification against the real runtime: honest results under different thread counts are
accepted (no false accusations), forged ones are caught, and a re-execution over the
verifier's own memory budget is skipped (the verifier fed its events directly, no broker)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu_worker.processor import execute
from processors.abc import Output
from processors.compute.generation import Sampling, choices_of
from processors.compute.models import manifest_record
from processors.compute.runtime import BlockSource, LoadedModel, ModelCache
from processors.execution.genesis import devnet_key
from processors.market.content import cid_of
from processors.state import MemoryStore
from processors.verifier import core
from processors.verifier.processor import Verifier
from schemas.events import JobResult, JobSettled, JobSubmitted, JobVerdict, VerdictCheck
from streams.kafka import Record
from streams.settings import Settings
from tests import market_events
from tests.market_events import signed_result, submitted

PROMPTS = [
    {"prompt": "the quick brown fox", "max_tokens": 12},
    {"messages": [{"role": "user", "content": "hello lattice"}], "max_tokens": 10},
    {"prompt": "providers are paid", "max_tokens": 6},
]


def load(tiny_store: tuple[Any, Any], tmp: Path, threads: int) -> LoadedModel:
    store, manifest = tiny_store
    model, _ = ModelCache(BlockSource(store), tmp, threads, use_gpu=False).load(manifest.cid)
    return model


def job(payload: dict[str, Any]) -> JobSubmitted:
    job_id = hashlib.sha256(json.dumps(payload).encode()).digest()
    return dataclasses.replace(submitted(job_id), input=json.dumps(payload).encode())


def verify(
    model: LoadedModel,
    payload: dict[str, Any],
    output: bytes,
    fingerprint: bytes,
    job_id: bytes | None = None,
) -> core.Check:
    """The verifier's check, as `Verifier.reexecute` makes it."""
    job_id = job(payload).job_id if job_id is None else job_id
    choices = choices_of(json.loads(output))
    prompt = model.prompt(payload)
    return core.check_generation(
        output,
        fingerprint,
        [model.continuation(prompt, c["token_ids"]) for c in choices],
        len(prompt),
        model.eos_token_id,
        Sampling.of(payload, job_id),
        model.decode,
    )


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_honest_results_pass_whatever_the_thread_count(
    tiny_store: tuple[Any, Any], tmp_path: Path, threads: int
) -> None:
    worker, verifier = (
        load(tiny_store, tmp_path / "w", threads),
        load(tiny_store, tmp_path / "v", 1),
    )
    for payload in PROMPTS:
        output, scheme, fingerprint = execute(worker, job(payload))
        assert scheme == core.GENERATION_SCHEME
        assert verify(verifier, payload, output, fingerprint).passed


def test_forged_generations_are_caught(tiny_store: tuple[Any, Any], tmp_path: Path) -> None:
    model = load(tiny_store, tmp_path, 1)
    payload = PROMPTS[0]
    output, _, fingerprint = execute(model, job(payload))
    document = json.loads(output)
    vocabulary = model.logits([1]).shape[-1]
    # Made-up tokens: each far below the argmax for this model.
    forged = dict(document, token_ids=[(t + 97) % vocabulary for t in document["token_ids"]])
    check = verify(model, payload, json.dumps(forged).encode(), fingerprint)
    assert not check.passed and "below the argmax" in check.detail
    # The right tokens with made-up logits.
    fake = np.frombuffer(fingerprint, dtype="<f4") + 0.5
    assert not verify(model, payload, output, fake.astype("<f4").tobytes()).passed
    # A truncated answer claiming fewer logits than tokens.
    assert not verify(model, payload, output, fingerprint[:-4]).passed


SAMPLED = {
    "prompt": "the quick brown fox",
    "max_tokens": 10,
    "temperature": 0.9,
    "top_p": 0.95,
    "n": 2,
    "logprobs": True,
    "top_logprobs": 3,
}


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_honest_sampled_results_pass_whatever_the_thread_count(
    tiny_store: tuple[Any, Any], tmp_path: Path, threads: int
) -> None:
    worker, verifier = (
        load(tiny_store, tmp_path / "w", threads),
        load(tiny_store, tmp_path / "v", 1),
    )
    for payload in [SAMPLED, dict(SAMPLED, temperature=1.6, top_p=1.0, stop=["e"], n=1)]:
        output, _, fingerprint = execute(worker, job(payload))
        check = verify(verifier, payload, output, fingerprint)
        assert check.passed, check.detail


def test_a_seed_gives_the_same_text_twice(tiny_store: tuple[Any, Any], tmp_path: Path) -> None:
    model = load(tiny_store, tmp_path, 1)
    seeded = dict(SAMPLED, seed=1234, n=1, logprobs=False, top_logprobs=0, max_tokens=12)
    first = execute(model, dataclasses.replace(job(seeded), job_id=b"\x01" * 32))[0]
    second = execute(model, dataclasses.replace(job(seeded), job_id=b"\x02" * 32))[0]
    assert first == second
    # Without a seed each job draws its own (the job id keys the noise).
    unseeded = {k: v for k, v in seeded.items() if k != "seed"}
    texts = {
        json.loads(execute(model, dataclasses.replace(job(unseeded), job_id=bytes([i]) * 32))[0])[
            "text"
        ]
        for i in range(4)
    }
    assert len(texts) > 1


def test_forged_sampled_tokens_texts_and_logprobs_are_caught(
    tiny_store: tuple[Any, Any], tmp_path: Path
) -> None:
    model = load(tiny_store, tmp_path, 1)
    payload = dict(SAMPLED, n=1, max_tokens=12)
    output, _, fingerprint = execute(model, job(payload))
    document = json.loads(output)
    assert verify(model, payload, output, fingerprint).passed
    prompt = model.prompt(payload)
    logits = model.continuation(prompt, document["token_ids"])
    # The likeliest token where the seed drew another: plausible, and still not the draw.
    swaps = [i for i, t in enumerate(document["token_ids"]) if int(np.argmax(logits[i])) != t]
    assert swaps, "the draw took the argmax everywhere: pick another seed"
    i = swaps[0]
    forged_ids = list(document["token_ids"])
    forged_ids[i] = int(np.argmax(logits[i]))
    forged = dict(document, token_ids=forged_ids[: i + 1], text=model.decode(forged_ids[: i + 1]))
    forged["logprobs"] = document["logprobs"][: i + 1]
    forged_print = np.frombuffer(fingerprint, dtype="<f4")[: i + 1].copy()
    forged_print[i] = logits[i].max()
    check = verify(model, payload, json.dumps(forged).encode(), forged_print.tobytes())
    assert not check.passed and "seeded draw" in check.detail, check.detail
    # The honest tokens with another text, or another logprob.
    wrong_text = dict(document, text=document["text"] + "!")
    check = verify(model, payload, json.dumps(wrong_text).encode(), fingerprint)
    assert not check.passed and "decode" in check.detail
    entries = [dict(e) for e in document["logprobs"]]
    entries[0]["logprob"] += 0.5
    wrong_logprob = dict(document, logprobs=entries)
    check = verify(model, payload, json.dumps(wrong_logprob).encode(), fingerprint)
    assert not check.passed and "logprob" in check.detail
    # A greedy answer to a sampled job (the cheaper work) is caught too.
    greedy, _, greedy_print = execute(model, job({**payload, "temperature": 0}))
    assert not verify(model, payload, greedy, greedy_print).passed


def test_tensor_results_compare_within_tolerance() -> None:
    def npz(**arrays: np.ndarray) -> bytes:
        out = io.BytesIO()
        np.savez(out, **arrays)
        return out.getvalue()

    job_id = b"\x01" * 32
    exact = np.linspace(-3, 3, 500, dtype=np.float32).reshape(5, 100)
    noisy = exact + np.float32(1e-5)
    fingerprint = core.tensor_fingerprint(npz(y=noisy), job_id)
    assert core.check_tensors(npz(y=noisy), npz(y=exact), fingerprint, job_id).passed
    wrong = exact.copy()
    wrong[2, 3] += 1.0
    assert not core.check_tensors(npz(y=wrong), npz(y=exact), fingerprint, job_id).passed


def result(key: bytes, output: bytes) -> JobResult:
    made = market_events.result(b"\x05" * 32, key, output=output, compute_ms=5)
    record = dataclasses.replace(
        made,
        output_cid=cid_of(output),
        output_digest=hashlib.sha256(output).digest(),
        output_size=len(output),
    )
    return signed_result(record, key)


def test_signature_output_deadline_and_timing_checks() -> None:
    from processors.execution.genesis import address_of

    key = b"\x09" * 32
    node = address_of(key)
    honest = result(key, b"{}")
    assert core.check_signature(honest, 27182).passed
    forged = signed_result(honest, b"\x08" * 32)  # someone else's signature
    assert forged.node == node and not core.check_signature(forged, 27182).passed
    assert not core.check_signature(dataclasses.replace(honest, output_size=3), 27182).passed
    assert core.check_output(honest).passed
    assert not core.check_output(dataclasses.replace(honest, output=b"[]")).passed
    late = submitted(honest.job_id, deadline_ms=1_000, submitted_at_ms=0)
    assert not core.check_deadline(honest, late).passed
    registration = market_events.registration(key, cpu_model="cpu", cpu_cores=2)
    assert core.check_timing(honest, registration, 10**6).passed
    # 10 TFLOP in 5 ms on a 2-core CPU is not believable.
    assert not core.check_timing(honest, registration, 10**13).passed
    elsewhere = dataclasses.replace(
        honest, hardware=dataclasses.replace(honest.hardware, device_name="H100")
    )
    assert not core.check_timing(elsewhere, registration, 0).passed
    assert core.outcome([core.Check("deadline", False, "")]) == core.INCONCLUSIVE
    assert core.outcome([core.Check("signature", False, "")]) == core.REJECTED


def test_generation_work_counts_what_a_cache_saves() -> None:
    # A 4-token prompt and 3 generated tokens: with a cache the prompt is run once, then
    # the two tokens that follow it; without, 4 + 5 + 6 tokens.
    assert core.generation_flops(10, 4, 3, cached=True) == 2 * 10 * 6
    assert core.generation_flops(10, 4, 3, cached=False) == 2 * 10 * 15
    # The least work is what the timing check holds an honest node to: never above what
    # the cached run did, or a fast honest node would be called impossibly fast.
    assert core.generation_flops(10**9, 500, 500, cached=True) * 100 < core.generation_flops(
        10**9, 500, 500, cached=False
    )


# -- the verifier's own memory budget ---------------------------------------------------------

NODE_KEY = b"\x61" * 32
USER_KEY = b"\x62" * 32


def judged(tiny_store: tuple[Any, Any], tmp: Path, events: list[Any], budget: int) -> list[Output]:
    """A fresh verifier with `budget` (and the model in its own blockstore) fed `events`:
    what it sends, with no broker (its `handle` and `tick`, as the runtime calls them)."""
    store, _ = tiny_store
    settings = Settings(data_dir=tmp, verify_bps=10_000, verifier_memory_bytes=budget)
    shutil.copytree(store.root, tmp / "verifier" / "blockstore")
    verifier = Verifier(settings, devnet_key("settler"))
    state = MemoryStore()
    outputs = list(verifier.tick(0, state))
    for offset, event in enumerate(events):
        record = Record("t", 0, offset, 0, None, event, b"")
        outputs += verifier.handle(record, state)
    return outputs


@pytest.fixture
def honest_generation(tiny_store: tuple[Any, Any], tmp_path: Path) -> list[Any]:
    """A node, the model, a signed job and the node's honest signed result for it."""
    store, manifest = tiny_store
    # The worker first, with the default budget: ONNX Runtime's CPU arena is capped once
    # per process, by the first model loaded, and the verifiers' small budgets must not be.
    worker, _ = ModelCache(BlockSource(store), tmp_path / "worker", 1, use_gpu=False).load(
        manifest.cid
    )
    job_record = market_events.signed_job(USER_KEY, manifest.cid, 0, now_ms=1_000_000)
    output, scheme, fingerprint = execute(worker, job_record)
    made = market_events.result(
        job_record.job_id, NODE_KEY, output=output, compute_ms=5, completed_at_ms=1_001_000
    )
    answer = signed_result(
        dataclasses.replace(
            made,
            output_cid=cid_of(output),
            output_digest=hashlib.sha256(output).digest(),
            fingerprint_scheme=scheme,
            fingerprint=fingerprint,
        ),
        NODE_KEY,
    )
    return [
        market_events.registration(NODE_KEY, price=10**15),
        manifest_record(manifest, b"\x01" * 20, 1, 0),  # as the market registers it
        job_record,
        market_events.assigned(job_record.job_id, 0, [answer.node]),
        answer,
    ]


def test_a_re_execution_over_the_verifier_budget_is_skipped_alike_by_every_replica(
    tiny_store: tuple[Any, Any], tmp_path: Path, honest_generation: list[Any]
) -> None:
    _, manifest = tiny_store
    weights = int(manifest.document["vram_required_bytes"])

    def verdict(name: str, budget: int) -> JobVerdict:
        outputs = judged(tiny_store, tmp_path / name, honest_generation, budget)
        verdicts = [o.event for o in outputs if isinstance(o.event, JobVerdict)]
        paid = [o.event for o in outputs if isinstance(o.event, JobSettled)]
        assert len(verdicts) == 1 and len(paid) == 1  # judged and settled, nothing raised
        assert paid[0].paid_wei > 0 and paid[0].slashed_wei == 0
        return verdicts[0]

    def check(of: JobVerdict, name: str) -> VerdictCheck:
        return next(c for c in of.checks if c.name == name)

    # Within the budget the result is re-executed (sampled: verify_bps is every result).
    roomy = verdict("roomy", 1 << 30)
    assert roomy.outcome == core.ACCEPTED
    assert "within tolerance" in check(roomy, "re-execution").detail
    # Over it, refused where the model would load (its weights alone), or where the
    # teacher-forced pass would run (the weights fit; their logits and cache do not).
    for what, budget in (("model tiny-gpt2", weights - (1 << 20)), ("re-execution", weights + 1)):
        first, again = verdict(f"{budget}-a", budget), verdict(f"{budget}-b", budget)
        assert first == again  # replicas with the same fixed budget write the same verdict
        skipped = check(first, "re-execution")
        assert skipped.passed, skipped
        assert skipped.detail.startswith(f"skipped: {what} needs about ")
        assert f"over the budget of {budget / (1 << 20):,.0f} MiB" in skipped.detail
        # Judged as an unsampled result: the other checks, timing from its own claim.
        assert first.outcome == core.ACCEPTED
        assert [c.name for c in first.checks] == [c.name for c in roomy.checks]
        assert check(first, "timing") == check(roomy, "timing")
