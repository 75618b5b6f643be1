"""Text generation's pure core: seeded sampling a verifier can re-derive, and the document
a generation's output is.

A worker chooses each generated token from the logits of one step; the verifier
recomputes those logits in one teacher-forced pass and must be able to say whether the
worker's token is one an honest run could have chosen. Greedy decoding (temperature 0)
takes the argmax. Sampling takes the argmax of `logits / temperature + g`, where `g` is
Gumbel noise drawn from a counter-based stream keyed by (seed, choice, step) (the
Gumbel-max trick: the same distribution as sampling from the softmax, but every draw is
a pure function of the logits and the key). Top-p keeps the smallest set of most likely
tokens whose mass reaches `top_p` (after temperature, as OpenAI and vLLM apply it).

Honest runs differ in the last bits of their logits (thread counts, devices), so the
verifier compares within a bound `B` on the logits (`processors.verifier.core.Tolerance`),
in the temperature-scaled space:

- the claimed token must *possibly* be in the nucleus: the mass of tokens certainly
  above it (by more than 2B) is under `top_p`, with the probabilities' own slack;
- its noisy score must be within 2B of the best noisy score among the tokens
  *certainly* in the nucleus.

A near-tie may go either way (no false accusation); a token the seed did not pick lies
below the best score by a Gumbel gap, of order one, far above the bound, so a forgery is
caught (the idea of Token-DiFR: with the sampling seed fixed, the honest token is
determined up to float noise). The seed is the request's `seed` when given (the same
request gives the same text twice) and otherwise the job id's hash (every job differs).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from processors.compute.budget import JobInputError

#: OpenAI's bounds on the sampling parameters.
MAX_TEMPERATURE = 2.0
MAX_CHOICES = 8
MAX_STOPS = 4
MAX_TOP_LOGPROBS = 20
_MASK64 = 2**64 - 1


class SamplingError(JobInputError):
    """A request's sampling parameters are out of range; the message names the parameter."""


@dataclass(frozen=True)
class Sampling:
    """How a generation chooses its tokens: the job input's sampling fields."""

    temperature: float = 0.0  # 0: greedy (the job input's default; OpenAI's routes send 1)
    top_p: float = 1.0
    seed: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def of(cls, request: Mapping[str, Any], job_id: bytes) -> Sampling:
        """The sampling a job input asks for (SamplingError naming a bad parameter)."""
        temperature = _number(request, "temperature", 0.0, 0.0, MAX_TEMPERATURE)
        top_p = _number(request, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0.0:
            raise SamplingError("top_p: must be greater than 0")
        n = _integer(request, "n", 1, 1, MAX_CHOICES)
        top_logprobs = _integer(request, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
        logprobs = request.get("logprobs", False)
        if not isinstance(logprobs, bool):
            raise SamplingError("logprobs: must be true or false")
        stop = request.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        if (
            not isinstance(stop, list | tuple)
            or len(stop) > MAX_STOPS
            or not all(isinstance(s, str) and s for s in stop)
        ):
            raise SamplingError(f"stop: a string or up to {MAX_STOPS} non-empty strings")
        seed = request.get("seed")
        if seed is None:
            key = int.from_bytes(hashlib.sha256(b"lattice-sampling" + job_id).digest()[:8])
        elif isinstance(seed, int) and not isinstance(seed, bool):
            key = seed & _MASK64
        else:
            raise SamplingError("seed: must be an integer")
        return cls(
            temperature, top_p, key, n, tuple(stop), logprobs or top_logprobs > 0, top_logprobs
        )


def _number(
    request: Mapping[str, Any], name: str, default: float, low: float, high: float
) -> float:
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise SamplingError(f"{name}: must be a number from {low:g} to {high:g}")
    return float(value)


def _integer(request: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SamplingError(f"{name}: must be an integer from {low} to {high}")
    return value


# -- choosing -----------------------------------------------------------------------------


def gumbel(seed: int, choice: int, step: int, size: int) -> np.ndarray:
    """Gumbel noise for one step: a pure function of the key. Built from the bit
    generator's raw stream (stable across numpy versions, unlike its distributions)."""
    bits = np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(choice, step)))
    raw = bits.random_raw(size)
    uniform = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return np.asarray(-np.log(-np.log(uniform)))


def _scaled(row: np.ndarray, temperature: float) -> np.ndarray:
    return np.asarray(row, dtype=np.float64) / temperature


def _probabilities(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max())
    return np.asarray(shifted / shifted.sum())


def nucleus(scores: np.ndarray, top_p: float) -> np.ndarray:
    """Which tokens top-p keeps: those whose mass before them (most likely first) is under
    `top_p`."""
    if top_p >= 1.0:
        return np.ones(scores.shape, dtype=bool)
    probabilities = _probabilities(scores)
    order = np.argsort(-scores, kind="stable")
    before = np.cumsum(probabilities[order]) - probabilities[order]
    keep = np.zeros(scores.shape, dtype=bool)
    keep[order[before < top_p]] = True
    return keep


def choose(row: np.ndarray, sampling: Sampling, choice: int, step: int) -> int:
    """The token an honest run picks from one step's logits."""
    if sampling.greedy:
        return int(np.argmax(row))
    scores = _scaled(row, sampling.temperature)
    noisy = scores + gumbel(sampling.seed, choice, step, scores.size)
    return int(np.argmax(np.where(nucleus(scores, sampling.top_p), noisy, -np.inf)))


def misfit(
    row: np.ndarray, token: int, sampling: Sampling, choice: int, step: int, bound: float
) -> str | None:
    """Why an honest run whose logits are within `bound` of `row` could not have chosen
    `token` at this step; None if it could."""
    if sampling.greedy:
        best = float(row.max())
        if row[token] < best - bound:
            return f"({token}) is {best - float(row[token]):.4f} below the argmax"
        return None
    scores = _scaled(row, sampling.temperature)
    margin = 2 * bound / sampling.temperature
    noisy = scores + gumbel(sampling.seed, choice, step, scores.size)
    if sampling.top_p < 1.0:
        probabilities = _probabilities(scores)
        slack = math.exp(margin)
        ranked = np.sort(scores)[::-1]
        cumulative = np.cumsum(np.sort(probabilities)[::-1])

        def mass_above(threshold: np.ndarray) -> np.ndarray:
            count = np.searchsorted(-ranked, -threshold, side="left")
            return np.where(count > 0, cumulative[np.maximum(count - 1, 0)], 0.0)

        if mass_above(np.asarray([scores[token] + margin]))[0] / slack >= sampling.top_p:
            return f"({token}) is outside the top_p {sampling.top_p:g} nucleus"
        # Tokens the nucleus surely keeps: the mass possibly above them is under top_p.
        certain = (mass_above(scores - margin) - probabilities) * slack < sampling.top_p
        if not certain.any():
            return None
        best = float(noisy[certain].max())
    else:
        best = float(noisy.max())
    if noisy[token] < best - margin:
        return f"({token}) is {best - float(noisy[token]):.4f} below the seeded draw"
    return None


# -- what goes with the tokens ------------------------------------------------------------


def log_softmax(row: np.ndarray) -> np.ndarray:
    """The model's own log-probabilities (before temperature and top-p, as OpenAI's
    `logprobs` report them)."""
    values = np.asarray(row, dtype=np.float64)
    top = values.max()
    return np.asarray(values - top - math.log(float(np.exp(values - top).sum())))


def top_logprobs(row: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The `k` most likely tokens of a step and their log-probabilities."""
    if k <= 0:
        return []
    values = log_softmax(row)
    best = np.argsort(-values, kind="stable")[:k]
    return [(int(t), float(values[t])) for t in best]


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop sequence in it, and whether there was one."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def held_back(stops: Sequence[str]) -> int:
    """Characters a stream keeps back: the start of a stop sequence may be arriving."""
    return max((len(s) for s in stops), default=1) - 1


# -- the output document -------------------------------------------------------------------


@dataclass(frozen=True)
class StreamedToken:
    """A token as it is generated, for a stream: its choice, its position there, the text
    it adds ("" while that text may still be cut: inside a multi-byte character or a
    possible stop sequence; a later token brings it), and its logprob entry when asked."""

    choice: int
    position: int
    token: int
    text: str
    logprob: dict[str, Any] | None = None


@dataclass(frozen=True)
class Choice:
    """One generated continuation. `chosen_logits`: the logit of each token when chosen
    (the fingerprint the verifier compares); `logprobs`: per token when asked for."""

    token_ids: tuple[int, ...]
    chosen_logits: tuple[float, ...]
    text: str
    finish_reason: str  # "stop" (end of sequence or a stop sequence) or "length"
    logprobs: tuple[dict[str, Any], ...] | None = None

    def document(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "token_ids": list(self.token_ids),
            "text": self.text,
            "finish_reason": self.finish_reason,
        }
        if self.logprobs is not None:
            out["logprobs"] = list(self.logprobs)
        return out


@dataclass(frozen=True)
class Generation:
    prompt_ids: tuple[int, ...]
    choices: tuple[Choice, ...]

    @property
    def chosen_logits(self) -> tuple[float, ...]:
        return tuple(logit for choice in self.choices for logit in choice.chosen_logits)

    def output(self) -> bytes:
        """One choice's fields at the top (the shape REST clients read), several under
        `choices` (`choices_of` reads both)."""
        document: dict[str, Any] = {"prompt_tokens": len(self.prompt_ids)}
        if len(self.choices) == 1:
            document.update(self.choices[0].document())
        else:
            document["choices"] = [choice.document() for choice in self.choices]
        return json.dumps(document, sort_keys=True).encode()


def choices_of(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A generation document's choices (KeyError or TypeError: not a generation)."""
    choices = document.get("choices", [document])
    for choice in choices:
        if not isinstance(choice["token_ids"], list):
            raise TypeError("token_ids is not a list")
    return [dict(choice) for choice in choices]
