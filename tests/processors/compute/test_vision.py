"""Vision. Image classification: a ViT directory imported as one ONNX graph scores images
as transformers does (through the model's own image processor). Image-text scores: a CLIP
directory scores images against each job's texts as CLIP does. Honest answers pass the
verifier whatever the thread count, changed ones do not; what is not an image is refused."""

from __future__ import annotations

import base64
import io
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processors.compute.models import IMAGE_CLASSIFICATION, IMAGE_TEXT, import_model
from processors.compute.runtime import (
    BlockSource,
    EncoderInputError,
    LoadedModel,
    ModelCache,
    label_scores,
)
from processors.market.content import Blockstore
from processors.verifier import core
from tests.tiny_models import build_tiny_clip, build_tiny_vit, png

IMAGES = [png(48, 40, 1), png(32, 32, 2), png(64, 20, 3)]


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Blockstore, Any]:
    directory = build_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))
    store = Blockstore(tmp_path_factory.mktemp("blockstore"))
    return directory, store, import_model(directory, "tiny-vit", store)


def load(vit: tuple[Path, Blockstore, Any], tmp: Path, threads: int) -> LoadedModel:
    _, store, manifest = vit
    model, _ = ModelCache(BlockSource(store), tmp, threads, use_gpu=False).load(manifest.cid)
    return model


def test_images_score_as_transformers_scores_them(
    vit: tuple[Path, Blockstore, Any], tmp_path: Path
) -> None:
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, ViTImageProcessorPil

    directory, _, manifest = vit
    assert manifest.document["task"] == IMAGE_CLASSIFICATION
    assert manifest.document["labels"] == ["cat", "dog", "bird"]
    output, logits = load(vit, tmp_path, 1).classify({"images": IMAGES})
    pictures = [Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB") for i in IMAGES]
    pixels = ViTImageProcessorPil.from_pretrained(directory)(pictures, return_tensors="pt")
    reference = AutoModelForImageClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        expected = reference(pixel_values=pixels["pixel_values"]).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    document = json.loads(output)
    assert [row[0]["label"] for row in document["labels"]] == [
        ["cat", "dog", "bird"][int(i)] for i in expected.argmax(-1)
    ]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_honest_image_labels_pass_and_changed_ones_fail(
    vit: tuple[Path, Blockstore, Any], tmp_path: Path, threads: int
) -> None:
    worker, verifier = load(vit, tmp_path / "w", threads), load(vit, tmp_path / "v", 1)
    output, logits = worker.classify({"images": IMAGES})
    _, again = verifier.classify({"images": IMAGES})
    scores = partial(label_scores, multi_label=False)
    labels = ["cat", "dog", "bird"]
    fingerprint = core.embedding_fingerprint(logits)
    assert core.check_classification(output, again, fingerprint, scores, labels).passed
    # Another image's answer in place of one.
    forged = json.loads(output)
    forged["logits"][0], forged["labels"][0] = forged["logits"][1], forged["labels"][1]
    changed = core.embedding_fingerprint(np.asarray(forged["logits"], dtype=np.float32))
    check = core.check_classification(json.dumps(forged).encode(), again, changed, scores, labels)
    assert not check.passed


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"images": []},
        {"images": ["not base64!"]},
        {"images": [base64.b64encode(b"GIF89a truncated").decode()]},
    ],
)
def test_what_is_not_an_image_is_refused(
    vit: tuple[Path, Blockstore, Any], tmp_path: Path, bad: dict[str, Any]
) -> None:
    with pytest.raises(EncoderInputError, match=r"^images"):
        load(vit, tmp_path, 1).classify(bad)


def test_an_image_declaring_too_many_pixels_is_refused_before_it_is_decoded(
    vit: tuple[Path, Blockstore, Any], tmp_path: Path
) -> None:
    from PIL import Image

    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, format="PNG")  # a few KB, 400 million pixels
    bomb = base64.b64encode(out.getvalue()).decode()
    with pytest.raises(EncoderInputError, match="not a readable image"):
        load(vit, tmp_path, 1).classify({"image": bomb})


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Blockstore, Any]:
    directory = build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
    store = Blockstore(tmp_path_factory.mktemp("blockstore"))
    return directory, store, import_model(directory, "tiny-clip", store)


TEXTS = ["a photo of a cat", "a photo of a dog", "a diagram"]


def test_images_score_against_texts_as_clip_scores_them(
    clip: tuple[Path, Blockstore, Any], tmp_path: Path
) -> None:
    import torch
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    directory, _, manifest = clip
    assert manifest.document["task"] == IMAGE_TEXT
    output, logits = load(clip, tmp_path, 1).classify({"images": IMAGES, "texts": TEXTS})
    pictures = [Image.open(io.BytesIO(base64.b64decode(i))).convert("RGB") for i in IMAGES]
    pixels = CLIPImageProcessorPil.from_pretrained(directory)(pictures, return_tensors="pt")
    words = AutoTokenizer.from_pretrained(directory)(TEXTS, padding=True, return_tensors="pt")
    reference = CLIPModel.from_pretrained(directory).eval()
    with torch.no_grad():
        expected = reference(pixel_values=pixels["pixel_values"], **words).logits_per_image
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)
    document = json.loads(output)
    assert logits.shape == (3, 3)
    assert {e["label"] for e in document["labels"][0]} == set(TEXTS)
    # The verifier reads the job's texts as the labels.
    again = load(clip, tmp_path / "v", 2).classify({"images": IMAGES, "texts": TEXTS})[1]
    scores = partial(label_scores, multi_label=False)
    fingerprint = core.embedding_fingerprint(logits)
    assert core.check_classification(output, again, fingerprint, scores, TEXTS).passed
    swapped = [TEXTS[1], TEXTS[0], TEXTS[2]]
    assert not core.check_classification(output, again, fingerprint, scores, swapped).passed
    with pytest.raises(EncoderInputError, match=r"^texts"):
        load(clip, tmp_path, 1).classify({"images": IMAGES})


@pytest.mark.parametrize("kind", ["vit", "clip"])
def test_jobs_scored_together_come_out_as_each_alone_and_pass_the_verifier(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A worker's batch of vision jobs: one pass over every job's images (and, for image-
    text scores, every job's texts, each job reading its own images against its own
    texts); each answer as alone, within the verifier's tolerance."""
    model = load(request.getfixturevalue(kind), tmp_path, 2)
    jobs: list[dict[str, Any]] = [
        {"images": IMAGES[:1]},
        {"images": IMAGES[1:]},
        {"image": IMAGES[2]},
    ]
    if kind == "clip":
        texts = [TEXTS[:2], ["a much longer description of a small bird on a wire"], TEXTS]
        jobs = [{**job, "texts": t} for job, t in zip(jobs, texts, strict=True)]
    together = model.encode_together(jobs)
    scores = partial(label_scores, multi_label=False)
    for job, (output, values) in zip(jobs, together, strict=True):
        alone, again = model.classify(job)
        assert values.shape == again.shape
        np.testing.assert_allclose(values, again, atol=1e-5)
        labels = job.get("texts", ["cat", "dog", "bird"])
        fingerprint = core.embedding_fingerprint(values)
        check = core.check_classification(output, again, fingerprint, scores, labels)
        assert check.passed, check.detail
        assert json.loads(output)["prompt_tokens"] == json.loads(alone)["prompt_tokens"]
        assert [r[0]["label"] for r in json.loads(output)["labels"]] == [
            r[0]["label"] for r in json.loads(alone)["labels"]
        ]
    with pytest.raises(EncoderInputError, match=r"^images"):
        model.encode_together([jobs[0], {"images": []}])
