"""Training is reproducible enough to verify: an epoch re-run from the previous checkpoint
with another thread count lands within tolerance; tampered weights do not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processors.compute.runtime import BlockSource, ModelCache
from processors.compute.training import Trainer, TrainingSpec, weights_array
from processors.verifier.core import check_training_epoch
from tests.tiny_models import CORPUS

DATASET = (" ".join(CORPUS) + "\n").encode() * 6
SPEC = TrainingSpec(epochs=3, batch_size=4, learning_rate=0.1, seq_len=16, seed=42)


def trainer(tiny_store: tuple[Any, Any], tmp: Path, threads: int) -> Trainer:
    store, manifest = tiny_store
    cache = ModelCache(BlockSource(store), tmp, threads, use_gpu=False)
    _, source = cache.unpacked(manifest.cid, "source")
    return Trainer(source, cache.tokenizer(manifest.cid), DATASET, SPEC, threads)


def test_epochs_learn_and_re_run_within_tolerance(
    tiny_store: tuple[Any, Any], tmp_path: Path
) -> None:
    epochs = trainer(tiny_store, tmp_path / "a", threads=1).run()
    assert [e.epoch for e in epochs] == [0, 1, 2]
    assert epochs[-1].loss < epochs[0].loss  # it learns the corpus
    again = trainer(tiny_store, tmp_path / "b", threads=2).rerun(2, epochs[1].checkpoint)
    check = check_training_epoch(
        2,
        weights_array(epochs[2].checkpoint),
        weights_array(again.checkpoint),
        epochs[2].loss,
        again.loss,
    )
    assert check.passed, check.detail
    first = trainer(tiny_store, tmp_path / "c", threads=1).rerun(0, None)
    assert check_training_epoch(
        0,
        weights_array(epochs[0].checkpoint),
        weights_array(first.checkpoint),
        epochs[0].loss,
        first.loss,
    ).passed


def test_skipped_or_tampered_epochs_are_caught(tiny_store: tuple[Any, Any], tmp_path: Path) -> None:
    epochs = trainer(tiny_store, tmp_path / "a", threads=1).run()
    again = trainer(tiny_store, tmp_path / "b", threads=1).rerun(2, epochs[1].checkpoint)
    rerun = weights_array(again.checkpoint)
    # Claiming epoch 1's weights as epoch 2's (work skipped).
    skipped = check_training_epoch(
        2, weights_array(epochs[1].checkpoint), rerun, epochs[2].loss, again.loss
    )
    assert not skipped.passed and "out of tolerance" in skipped.detail
    # The right weights, a made-up loss.
    assert not check_training_epoch(
        2, weights_array(epochs[2].checkpoint), rerun, 0.01, again.loss
    ).passed
