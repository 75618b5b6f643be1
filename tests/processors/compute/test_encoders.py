"""Encoder models. Sentence embeddings: a sentence-transformers directory imported as one
ONNX graph (encoder, pooling, normalising) gives sentence-transformers' own vectors. Text
classification: labels and scores as transformers makes them. Honest answers pass the
verifier whatever the thread count, made-up ones do not."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processors.compute.models import CLASSIFICATION, EMBEDDING, ModelImportError, import_model
from processors.compute.runtime import (
    BlockSource,
    EncoderInputError,
    LoadedModel,
    ModelCache,
    label_scores,
)
from processors.market.content import Blockstore
from processors.verifier import core
from tests.tiny_models import build_tiny_sentence_encoder, build_tiny_text_classifier

TEXTS = ["the quick brown fox", "hello lattice", "providers are paid on the ledger"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Blockstore, Any]:
    directory = build_tiny_sentence_encoder(tmp_path_factory.mktemp("tiny-encoder"))
    store = Blockstore(tmp_path_factory.mktemp("blockstore"))
    return directory, store, import_model(directory, "tiny-encoder", store)


def load(encoder: tuple[Path, Blockstore, Any], tmp: Path, threads: int) -> LoadedModel:
    _, store, manifest = encoder
    model, _ = ModelCache(BlockSource(store), tmp, threads, use_gpu=False).load(manifest.cid)
    return model


def test_a_sentence_transformers_directory_imports_as_an_embedding_model(
    encoder: tuple[Path, Blockstore, Any],
) -> None:
    _, _, manifest = encoder
    document = manifest.document
    assert document["task"] == EMBEDDING and document["model_type"] == "bert"
    assert (document["dimensions"], document["pooling"], document["normalized"]) == (
        32,
        "mean",
        True,
    )
    assert document["max_positions"] == 64  # sentence_bert_config's max_seq_length
    assert [i["name"] for i in document["inputs"]] == ["input_ids", "attention_mask"]
    assert [o["name"] for o in document["outputs"]] == ["embeddings"]


def test_vectors_are_sentence_transformers_own(
    encoder: tuple[Path, Blockstore, Any], tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    directory, _, _ = encoder
    output, vectors = load(encoder, tmp_path, 1).embed({"input": TEXTS})
    reference = SentenceTransformer(str(directory), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    document = json.loads(output)
    np.testing.assert_allclose(document["embeddings"], vectors, atol=1e-7)
    assert document["prompt_tokens"] > len(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_honest_vectors_pass_and_made_up_ones_fail(
    encoder: tuple[Path, Blockstore, Any], tmp_path: Path, threads: int
) -> None:
    worker, verifier = load(encoder, tmp_path / "w", threads), load(encoder, tmp_path / "v", 1)
    output, vectors = worker.embed({"input": TEXTS})
    _, again = verifier.embed({"input": TEXTS})
    fingerprint = core.embedding_fingerprint(vectors)
    assert core.check_embeddings(output, again, fingerprint).passed
    # Another text's vector in place of one (cheaper to make than running the model).
    forged = json.loads(output)
    forged["embeddings"][1] = forged["embeddings"][0]
    check = core.check_embeddings(json.dumps(forged).encode(), again, fingerprint)
    assert not check.passed and "out of tolerance" in check.detail
    # Honest vectors behind a fingerprint of other ones.
    other = core.embedding_fingerprint(vectors + 0.01)
    assert not core.check_embeddings(output, again, other).passed


@pytest.mark.parametrize("bad", [{}, {"input": []}, {"input": [1, 2]}, {"input": ["x"] * 257}])
def test_inputs_that_are_not_texts_are_refused(
    encoder: tuple[Path, Blockstore, Any], tmp_path: Path, bad: dict[str, Any]
) -> None:
    with pytest.raises(EncoderInputError, match=r"^input:"):
        load(encoder, tmp_path, 1).embed(bad)


def test_a_pooling_it_cannot_run_is_refused_at_import(
    encoder: tuple[Path, Blockstore, Any], tmp_path: Path
) -> None:
    directory = build_tiny_sentence_encoder(tmp_path / "max-pooled")
    pooling = directory / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(
        json.dumps({**config, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True})
    )
    with pytest.raises(ModelImportError, match="only mean and CLS pooling"):
        import_model(directory, "max-pooled", Blockstore(tmp_path / "store"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Blockstore, Any]:
    directory = build_tiny_text_classifier(tmp_path_factory.mktemp("tiny-classifier"))
    store = Blockstore(tmp_path_factory.mktemp("blockstore"))
    return directory, store, import_model(directory, "tiny-classifier", store)


def test_a_classifier_imports_with_its_labels_and_scores_as_transformers_does(
    classifier: tuple[Path, Blockstore, Any], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory, _, manifest = classifier
    document = manifest.document
    assert document["task"] == CLASSIFICATION
    assert document["labels"] == ["negative", "neutral", "positive"]
    output, logits = load(classifier, tmp_path, 1).classify({"input": TEXTS})
    tokenizer = AutoTokenizer.from_pretrained(directory)
    reference = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        expected = reference(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-5)
    labels = json.loads(output)["labels"]
    assert [len(row) for row in labels] == [3, 3, 3]
    for row, values in zip(labels, expected.softmax(-1).numpy(), strict=True):
        assert row[0]["label"] == ["negative", "neutral", "positive"][int(values.argmax())]
        assert abs(sum(e["score"] for e in row) - 1) < 1e-6


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_honest_classifications_pass_and_changed_labels_fail(
    classifier: tuple[Path, Blockstore, Any], tmp_path: Path, threads: int
) -> None:
    worker, verifier = (
        load(classifier, tmp_path / "w", threads),
        load(classifier, tmp_path / "v", 1),
    )
    output, logits = worker.classify({"input": TEXTS})
    _, again = verifier.classify({"input": TEXTS})
    labels = verifier.manifest.document["labels"]
    scores = partial(label_scores, multi_label=False)

    def check(document: bytes, values: np.ndarray = logits) -> core.Check:
        return core.check_classification(
            document, again, core.embedding_fingerprint(values), scores, labels
        )

    assert check(output).passed
    # The top label swapped for another, its logits left as they were.
    forged = json.loads(output)
    first = forged["labels"][0]
    first[0]["label"], first[1]["label"] = first[1]["label"], first[0]["label"]
    assert not check(json.dumps(forged).encode()).passed
    # Logits made up to favour a label.
    tilted = json.loads(output)
    tilted["logits"][0][0] += 1.0
    assert not check(json.dumps(tilted).encode(), np.asarray(tilted["logits"])).passed


@pytest.mark.parametrize("kind", ["encoder", "classifier"])
def test_jobs_encoded_together_come_out_as_each_alone_and_pass_the_verifier(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A worker's batch of text-encoder jobs: one pass over every job's texts, padded to
    the longest of them all; each job's answer as alone, within the tolerance."""
    model = load(request.getfixturevalue(kind), tmp_path, 1)
    jobs: list[dict[str, Any]] = [
        {"input": "hi"},
        {"input": TEXTS},
        {"input": ["a much longer text than any other in this batch, padded the least"]},
    ]
    together = model.encode_together(jobs)
    labels = model.manifest.document.get("labels") or []
    for job, (output, values) in zip(jobs, together, strict=True):
        alone, again = model.embed(job) if kind == "encoder" else model.classify(job)
        fingerprint = core.embedding_fingerprint(values)
        if kind == "encoder":
            check = core.check_embeddings(output, again, fingerprint)
        else:
            scores = partial(label_scores, multi_label=False)
            check = core.check_classification(output, again, fingerprint, scores, labels)
        assert check.passed, check.detail
        assert json.loads(output)["prompt_tokens"] == json.loads(alone)["prompt_tokens"]
        np.testing.assert_allclose(values, again, atol=1e-5)
    with pytest.raises(EncoderInputError):
        model.encode_together([{"input": "fine"}, {"input": 7}])
