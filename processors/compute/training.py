"""Training jobs with torch: deterministic epochs and content-addressed checkpoints.

The model starts from the source weights its manifest carries (the Hugging Face directory
the importer stored), the dataset is UTF-8 text tokenised with the model's tokenizer and cut
into `seq_len`-token sequences, and each epoch visits them in an order drawn from a
generator seeded by the job's seed and the epoch number, in batches of `batch_size`, with
plain SGD (no optimiser state: the weights alone are a complete checkpoint, so any epoch can
be re-run from the previous epoch's checkpoint). torch runs with deterministic algorithms.

A checkpoint is the weights in safetensors form (names sorted, so the bytes depend only on
the values). Thread counts change the order of float sums, so checkpoints from different
machines differ in their last bits; the verifier re-runs a seeded sample of epochs and
compares within tolerance (`processors.verifier.core.check_training_epoch`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.events import JobSubmitted


@dataclass(frozen=True)
class TrainingSpec:
    epochs: int
    batch_size: int
    learning_rate: float
    seq_len: int
    seed: int

    @classmethod
    def of(cls, job: JobSubmitted) -> TrainingSpec:
        params = job.params
        return cls(
            epochs=int(job.epochs or 1),
            batch_size=int(job.batch_size or 8),
            learning_rate=float(params.get("learning_rate", "0.05")),
            seq_len=int(params.get("seq_len", "32")),
            seed=int.from_bytes(job.job_id[:6]),  # 48 bits: torch seeds are 64-bit signed
        )


@dataclass(frozen=True)
class Epoch:
    epoch: int
    checkpoint: bytes  # safetensors bytes
    loss: float
    samples: int


def sequences(tokenizer: Any, text: bytes, seq_len: int) -> np.ndarray:
    ids = tokenizer(text.decode("utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
    count = len(ids) // seq_len
    if count == 0:
        raise ValueError(
            f"the dataset has {len(ids)} tokens, fewer than one {seq_len}-token sequence"
        )
    return np.asarray(ids[: count * seq_len], dtype=np.int64).reshape(count, seq_len)


def weights_bytes(model: Any) -> bytes:
    from safetensors.torch import save

    state = {k: v.detach().contiguous().clone() for k, v in sorted(model.state_dict().items())}
    return bytes(save(state))


def load_weights(model: Any, checkpoint: bytes) -> None:
    from safetensors.torch import load

    model.load_state_dict(load(checkpoint), strict=False)


def weights_array(checkpoint: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return dict(load(checkpoint))


class Trainer:
    """One loaded model to train (or re-run epochs of) on one dataset."""

    def __init__(
        self, source_dir: Path, tokenizer: Any, dataset: bytes, spec: TrainingSpec, threads: int
    ):
        import torch
        from transformers import AutoModelForCausalLM

        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(threads)
        self.torch = torch
        self.spec = spec
        self.model = AutoModelForCausalLM.from_pretrained(source_dir, local_files_only=True)
        self.data = torch.from_numpy(sequences(tokenizer, dataset, spec.seq_len))

    def epoch(self, number: int) -> Epoch:
        torch = self.torch
        model, spec = self.model, self.spec
        model.train()
        optimiser = torch.optim.SGD(model.parameters(), lr=spec.learning_rate)
        seed = (spec.seed << 12) + number
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout, if the config has any
        order = torch.randperm(len(self.data), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), spec.batch_size):
            batch = self.data[order[start : start + spec.batch_size]]
            loss = model(input_ids=batch, labels=batch).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
            batches += 1
        return Epoch(number, weights_bytes(model), total / max(batches, 1), len(self.data))

    def run(self, progress: Callable[[Epoch], None] = lambda _: None) -> list[Epoch]:
        epochs = []
        for number in range(self.spec.epochs):
            epochs.append(self.epoch(number))
            progress(epochs[-1])
        return epochs

    def rerun(self, number: int, previous: bytes | None) -> Epoch:
        """Epoch `number` again, from the previous epoch's checkpoint (None: the start)."""
        if previous is not None:
            load_weights(self.model, previous)
        return self.epoch(number)


def output_document(epochs: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"epochs": epochs, "final_checkpoint_cid": epochs[-1]["checkpoint_cid"]}, sort_keys=True
    ).encode()
