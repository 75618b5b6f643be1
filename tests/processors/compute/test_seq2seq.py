"""Encoder-decoder (T5-style) generation: a directory with `is_encoder_decoder` imports as
text2text-generation, its graph gives transformers' logits and greedy tokens, sampled
answers are verified token by token as a causal LM's are (honest ones pass whatever the
thread count, forged tokens are caught), prompts of different lengths share a batch, and
chat works without a chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpu_worker.processor import execute
from processors.compute.models import SEQ2SEQ, import_model
from processors.compute.runtime import BlockSource, LoadedModel, ModelCache
from processors.market.content import Blockstore
from processors.verifier.core import generation_fingerprint
from tests.processors.verifier.test_core import job, verify
from tests.tiny_models import build_tiny_t5

SAMPLED = {
    "prompt": "the quick brown fox",
    "max_tokens": 10,
    "temperature": 0.9,
    "top_p": 0.95,
    "n": 2,
    "logprobs": True,
    "top_logprobs": 3,
}


@pytest.fixture(scope="module")
def t5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Blockstore, Any]:
    directory = build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))
    store = Blockstore(tmp_path_factory.mktemp("blockstore"))
    return directory, store, import_model(directory, "tiny-t5", store)


def load(t5: tuple[Path, Blockstore, Any], tmp: Path, threads: int) -> LoadedModel:
    _, store, manifest = t5
    model, _ = ModelCache(BlockSource(store), tmp, threads, use_gpu=False).load(manifest.cid)
    return model


def test_an_encoder_decoder_imports_as_text2text_generation_with_transformers_logits(
    t5: tuple[Path, Blockstore, Any], tmp_path: Path
) -> None:
    import torch
    from transformers import T5ForConditionalGeneration

    directory, _, manifest = t5
    document = manifest.document
    assert (document["task"], document["model_type"]) == (SEQ2SEQ, "t5")
    assert (document["eos_token_id"], document["decoder_start_token_id"]) == (1, 0)
    names = [i["name"] for i in document["inputs"]]
    assert names == ["input_ids", "attention_mask", "decoder_input_ids"]
    model = load(t5, tmp_path, 1)
    assert model.masked
    prompt = model.prompt({"prompt": "hello lattice"})
    assert prompt[-1] == 1  # the tokenizer's closing </s>, as T5 reads its inputs
    generated = [5, 17, 42]
    rows = model.continuation(prompt, generated)
    reference = T5ForConditionalGeneration.from_pretrained(directory).eval()
    with torch.no_grad():
        expected = reference(
            input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([[0, *generated]])
        ).logits[0]
    assert rows.shape == (len(generated) + 1, expected.shape[-1])
    np.testing.assert_allclose(rows, expected.numpy(), atol=1e-4)


def test_greedy_tokens_are_transformers_own(
    t5: tuple[Path, Blockstore, Any], tmp_path: Path
) -> None:
    import torch
    from transformers import T5ForConditionalGeneration

    directory, _, _ = t5
    model = load(t5, tmp_path, 1)
    payload = {"prompt": "providers are paid on the ledger", "max_tokens": 8}
    ours = json.loads(model.generate(payload).output())["token_ids"]
    reference = T5ForConditionalGeneration.from_pretrained(directory).eval()
    with torch.no_grad():
        theirs = reference.generate(
            torch.tensor([model.prompt(payload)]), max_new_tokens=8, do_sample=False
        )[0].tolist()[1:]
    assert ours == [t for t in theirs[: len(ours) + 1] if t != 1][: len(ours)]
    assert len(ours) == 8 or theirs[len(ours)] == 1  # stopped where transformers stops


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_honest_sampled_answers_pass_and_forged_tokens_are_caught(
    t5: tuple[Path, Blockstore, Any], tmp_path: Path, threads: int
) -> None:
    worker, verifier = load(t5, tmp_path / "w", threads), load(t5, tmp_path / "v", 1)
    output, _, fingerprint = execute(worker, job(SAMPLED))
    check = verify(verifier, SAMPLED, output, fingerprint)
    assert check.passed, check.detail
    payload = dict(SAMPLED, n=1, logprobs=False, top_logprobs=0)
    output, _, fingerprint = execute(worker, job(payload))
    assert verify(verifier, payload, output, fingerprint).passed
    document = json.loads(output)
    prompt = verifier.prompt(payload)
    rows = verifier.continuation(prompt, document["token_ids"])
    # The likeliest token where the seed drew another: plausible, and still not the draw.
    swaps = [i for i, t in enumerate(document["token_ids"]) if int(np.argmax(rows[i])) != t]
    assert swaps, "the draw took the argmax everywhere: pick another seed"
    i = swaps[0]
    forged_ids = [*document["token_ids"][:i], int(np.argmax(rows[i]))]
    forged = dict(document, token_ids=forged_ids, text=verifier.decode(forged_ids))
    fake = np.array([rows[k][t] for k, t in enumerate(forged_ids)], dtype="<f4")
    check = verify(verifier, payload, json.dumps(forged).encode(), fake.tobytes())
    assert not check.passed and "seeded draw" in check.detail, check.detail


def test_chat_runs_without_a_chat_template(
    t5: tuple[Path, Blockstore, Any], tmp_path: Path
) -> None:
    model = load(t5, tmp_path, 1)
    messages = [{"role": "user", "content": "hello lattice"}]
    prompt = model.prompt({"messages": messages})
    assert model.decode(prompt) == "user: hello lattice"
    output, _, fingerprint = execute(model, job({"messages": messages, "max_tokens": 4}))
    assert verify(model, {"messages": messages, "max_tokens": 4}, output, fingerprint).passed


def test_generations_of_different_prompt_lengths_run_together_as_each_alone(
    t5: tuple[Path, Blockstore, Any], tmp_path: Path
) -> None:
    """A worker's batch of encoder-decoder jobs: the shorter prompts padded on the right
    and masked, each row sampled with its own job's seed; every row as alone, verified."""
    model = load(t5, tmp_path, 2)
    requests: list[dict[str, Any]] = [
        {"prompt": "hi", "max_tokens": 6},
        {"prompt": "providers are paid on the ledger once verified", "max_tokens": 9,
         "temperature": 0.9, "seed": 3},
        {"prompt": "the quick brown fox", "max_tokens": 4, "temperature": 1.2, "top_p": 0.9},
    ]  # fmt: skip
    assert len({len(model.prompt(r)) for r in requests}) == len(requests)
    assert all(model.batchable(r) for r in requests)
    job_ids = [bytes([7 + i]) * 32 for i in range(len(requests))]
    together = model.generate_together(requests, job_ids)
    for request, job_id, batched in zip(requests, job_ids, together, strict=True):
        ((b,), (a,)) = (batched.choices, model.generate(request, None, job_id).choices)
        assert (b.token_ids, b.text, b.finish_reason) == (a.token_ids, a.text, a.finish_reason)
        np.testing.assert_allclose(b.chosen_logits, a.chosen_logits, rtol=1e-5, atol=1e-5)
        fingerprint = generation_fingerprint(batched.chosen_logits)
        check = verify(model, request, batched.output(), fingerprint, job_id)
        assert check.passed, check.detail
    assert len({len(g.choices[0].token_ids) for g in together}) > 1  # rows ended apart
