"""Seeded sampling's pure core: honest runs whose logits differ within the tolerance are
never accused, tokens the seed did not draw are caught, and the draws follow the model's
distribution."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.compute.generation import (
    Sampling,
    SamplingError,
    choose,
    cut_at_stop,
    held_back,
    misfit,
    nucleus,
)
from processors.verifier.core import Tolerance

TOLERANCE = Tolerance()


def bound_of(row: np.ndarray) -> float:
    return float(TOLERANCE.bound(float(np.abs(row).max())))


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    temperature=st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0, 1.5, 2.0]),
    top_p=st.sampled_from([0.05, 0.3, 0.9, 0.95, 1.0]),
    step=st.integers(0, 500),
    vocabulary=st.integers(2, 300),
    spread=st.floats(0.1, 12.0),
    ties=st.booleans(),
)
def test_an_honest_run_within_the_tolerance_is_never_accused(
    seed: int,
    temperature: float,
    top_p: float,
    step: int,
    vocabulary: int,
    spread: float,
    ties: bool,
) -> None:
    rng = np.random.default_rng(seed % 2**32)
    row = rng.normal(0, spread, vocabulary).astype(np.float32)
    if ties:  # near-ties are where honest runs part ways
        row[rng.integers(0, vocabulary, vocabulary // 2)] = row.max()
    sampling = Sampling(temperature=temperature, top_p=top_p, seed=seed)
    bound = bound_of(row)
    # Another device's logits: each within the bound of the verifier's.
    theirs = row + rng.uniform(-0.5, 0.5, vocabulary).astype(np.float32) * bound
    token = choose(theirs, sampling, choice=0, step=step)
    assert misfit(row, token, sampling, 0, step, bound) is None


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 1.0), (1.0, 0.9), (1.5, 1.0)])
def test_tokens_the_seed_did_not_draw_are_caught(temperature: float, top_p: float) -> None:
    rng = np.random.default_rng(7)
    caught = trials = 0
    for step in range(400):
        row = rng.normal(0, 3, 2_000).astype(np.float32)
        sampling = Sampling(temperature=temperature, top_p=top_p, seed=11)
        honest = choose(row, sampling, 0, step)
        # The forger's best guess: the most likely token (or the runner-up) in its place.
        ranked = np.argsort(-row)
        forged = int(ranked[0] if ranked[0] != honest else ranked[1])
        trials += 1
        caught += misfit(row, forged, sampling, 0, step, bound_of(row)) is not None
    assert caught / trials > 0.97


def test_draws_follow_the_softmax_at_the_temperature() -> None:
    row = np.log(np.asarray([0.5, 0.3, 0.15, 0.05]))
    sampling = Sampling(temperature=1.0, seed=3)
    draws = np.bincount([choose(row, sampling, 0, step) for step in range(8_000)], minlength=4)
    np.testing.assert_allclose(draws / draws.sum(), [0.5, 0.3, 0.15, 0.05], atol=0.02)
    # Colder: the likeliest dominates; top_p 0.6 keeps the first two only.
    cold = Sampling(temperature=0.25, seed=3)
    assert np.mean([choose(row, cold, 0, s) == 0 for s in range(2_000)]) > 0.85
    nucleus_only = Sampling(temperature=1.0, top_p=0.6, seed=3)
    assert {choose(row, nucleus_only, 0, s) for s in range(500)} == {0, 1}
    assert list(nucleus(row, 0.6)) == [True, True, False, False]


def test_the_key_decides_every_draw() -> None:
    row = np.zeros(1_000)
    one = Sampling(temperature=1.0, seed=5)
    again = [choose(row, one, 0, s) for s in range(50)]
    assert again == [choose(row, one, 0, s) for s in range(50)]
    assert again != [choose(row, Sampling(temperature=1.0, seed=6), 0, s) for s in range(50)]
    assert again != [choose(row, one, 1, s) for s in range(50)]  # another choice, other draws


def test_the_seed_is_the_requests_or_the_jobs() -> None:
    given_seed = Sampling.of({"temperature": 1, "seed": 42}, b"\x01" * 32)
    assert given_seed == Sampling.of({"temperature": 1, "seed": 42}, b"\x02" * 32)
    assert Sampling.of({}, b"\x01" * 32).seed != Sampling.of({}, b"\x02" * 32).seed
    assert Sampling.of({"seed": -1}, b"").seed == 2**64 - 1
    assert Sampling.of({}, b"").greedy and Sampling.of({"stop": "\n"}, b"").stop == ("\n",)


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"n": True}, "n"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": 3}, "logprobs"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_out_of_range_parameters_are_named(request_: dict[str, object], named: str) -> None:
    with pytest.raises(SamplingError, match=f"^{named}:"):
        Sampling.of(request_, b"")


def test_stop_sequences_cut_the_text_and_hold_back_a_stream() -> None:
    assert cut_at_stop("hello world. bye", [".", "bye"]) == ("hello world", True)
    assert cut_at_stop("hello", ["."]) == ("hello", False)
    assert held_back(["\n\n", "END"]) == 2 and held_back([]) == 0
