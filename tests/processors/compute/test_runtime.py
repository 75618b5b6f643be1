"""Text generation on ONNX Runtime against the same model run by transformers in torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processors.compute import models
from processors.compute.runtime import BlockSource, LoadedModel, ModelCache
from processors.market.content import Blockstore

PROMPT = {"prompt": "the quick brown fox", "max_tokens": 24}


def greedy_in_torch(
    directory: Path, prompt: list[int], count: int
) -> tuple[list[int], list[float]]:
    """The reference: every step a full forward pass over the whole sequence, no cache."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    ids, chosen = list(prompt), []
    with torch.no_grad():
        for _ in range(count):
            row = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].numpy()
            token = int(np.argmax(row))
            ids.append(token)
            chosen.append(float(row[token]))
    return ids[len(prompt) :], chosen


def load(store: Blockstore, manifest: models.Manifest, tmp: Path) -> LoadedModel:
    model, _ = ModelCache(BlockSource(store), tmp, 1, use_gpu=False).load(manifest.cid)
    return model


def check_against_torch(model: LoadedModel, directory: Path) -> None:
    generation = model.generate(PROMPT)
    (choice,) = generation.choices
    count = len(choice.token_ids)
    assert count > 0
    tokens, chosen = greedy_in_torch(directory, list(generation.prompt_ids), count)
    assert list(choice.token_ids) == tokens
    np.testing.assert_allclose(generation.chosen_logits, chosen, rtol=1e-4, atol=1e-4)


def test_the_imported_graph_carries_a_kv_cache_and_generates_as_torch_does(
    tiny_store: tuple[Any, Any], tiny_gpt2: Path, tmp_path: Path
) -> None:
    store, manifest = tiny_store
    assert manifest.document["kv_cache"] == {"layers": 2, "heads": 2, "head_dim": 16}
    names = [i["name"] for i in manifest.document["inputs"]]
    assert names == ["input_ids", "attention_mask", "past_keys", "past_values"]
    model = load(store, manifest, tmp_path)
    assert model.masked
    check_against_torch(model, tiny_gpt2)
    # Step by step through the cache, the logits of a whole sequence in one pass.
    ids = [*model.prompt_ids(PROMPT), 7, 11, 13]
    whole = model.logits(ids)
    rows, past = model.step(ids[:2], None)
    pieces = [rows]
    for token in ids[2:]:
        rows, past = model.step([token], past)
        pieces.append(rows)
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=1e-5, atol=1e-5)
    assert past[0].shape == (2, 1, 2, len(ids), 16)


def test_a_model_whose_cache_cannot_be_exported_gets_the_plain_graph(
    tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(model: Any) -> models.KvCache:
        raise TypeError("a hybrid cache")

    monkeypatch.setattr(models, "_kv_cache_of", refuse)
    heard: list[str] = []
    store = Blockstore(tmp_path / "store")
    manifest = models.import_model(tiny_gpt2, "plain", store, heard.append)
    assert "kv_cache" not in manifest.document
    assert [i["name"] for i in manifest.document["inputs"]] == ["input_ids"]
    assert any("no key/value cache" in line and "a hybrid cache" in line for line in heard)
    model = load(store, manifest, tmp_path / "work")
    assert model.kv_cache is None
    check_against_torch(model, tiny_gpt2)


def test_generations_run_together_come_out_as_each_alone_and_pass_the_verifier(
    tiny_store: tuple[Any, Any], tmp_path: Path
) -> None:
    """A worker's batch: prompts of different lengths (the shorter padded on the left and
    masked), each job's own sampling, budget, stop sequences and logprobs; every row as
    `generate` makes it alone, and verified."""
    from processors.compute.generation import Sampling
    from processors.verifier.core import check_generation, generation_fingerprint

    store, manifest = tiny_store
    model = load(store, manifest, tmp_path)
    requests: list[dict[str, Any]] = [
        {"prompt": "the quick brown fox", "max_tokens": 12},
        {"prompt": "a", "max_tokens": 5, "temperature": 0.9, "seed": 7},
        {"prompt": "the cat sat down on the mat", "max_tokens": 9, "temperature": 1.3,
         "top_p": 0.9, "logprobs": True},
        {"prompt": "one two", "max_tokens": 16, "temperature": 0.8, "stop": ["e"]},
    ]  # fmt: skip
    assert len({len(model.prompt(r)) for r in requests}) == len(requests)
    job_ids = [bytes([i]) * 32 for i in range(len(requests))]
    together = model.generate_together(requests, job_ids)
    for request, job_id, batched in zip(requests, job_ids, together, strict=True):
        alone = model.generate(request, None, job_id)
        ((b,), (a,)) = (batched.choices, alone.choices)
        assert (b.token_ids, b.text, b.finish_reason) == (a.token_ids, a.text, a.finish_reason)
        assert (b.logprobs is None) == (a.logprobs is None)
        np.testing.assert_allclose(b.chosen_logits, a.chosen_logits, rtol=1e-5, atol=1e-5)
        prompt = model.prompt(request)
        logits = model.continuation(prompt, list(b.token_ids))
        check = check_generation(
            batched.output(),
            generation_fingerprint(batched.chosen_logits),
            [logits],
            len(prompt),
            model.eos_token_id,
            Sampling.of(request, job_id),
            model.decode,
        )
        assert check.passed, check.detail
    assert any(len(g.choices[0].token_ids) < 12 for g in together)  # rows ended apart
    # Rows ride along to the longest budget: a batch whose longest prompt would then pass
    # the model's positions is refused (the worker runs its jobs one by one).
    limit = int(manifest.document["max_positions"])
    far = {"prompt": "the quick brown fox", "max_tokens": limit}
    with pytest.raises(ValueError, match="positions"):
        model.generate_together([{"prompt": "a " * (limit // 2)}, far], job_ids[:2])
    # A graph exported before the mask: one prompt length a batch (it is refused before
    # anything runs).
    model.masked = False
    with pytest.raises(ValueError, match="one batch group"):
        model.generate_together(
            [{"prompt": "a"}, {"prompt": "a much longer prompt than that"}], job_ids[:2]
        )
    model.masked = True
    with pytest.raises(ValueError, match="single-choice"):
        model.generate_together([{"prompt": "a", "n": 2}, {"prompt": "a"}], job_ids[:2])
