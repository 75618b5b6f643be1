"""Proof-of-compute checks (pure core).

A result is checked for: its signature (the node's key), the assignment it answers, its
output (inline bytes hashing to the claimed digest and CID), its deadline, the plausibility
of its timings against the hardware the node registered, and — for the seeded sample of
jobs the verifier re-executes, and for every redundant pair — its numbers.

Tolerance (why honest nodes are never accused): GPUs, CPUs and thread counts sum floats in
different orders, so logits differ in their last bits between honest runs. Nothing is
compared bit for bit. A generated token is accepted when an honest run whose logits are
within `atol + rtol·|max|` of the verifier's (recomputed in one teacher-forced pass) could
have chosen it: for greedy decoding, within that bound of the row's maximum (a near-tie
may go either way); for seeded sampling, re-deriving the seeded draw
(`processors.compute.generation.misfit`). The logit the node reported for it must be
within the same tolerance of the recomputed one, as must its logprobs when asked for, and
the text must be what the tokens decode to, cut at the first stop sequence; tensors are
compared element-wise with the same rule.
Forged output (tokens the model would not produce, made-up numbers) fails by margins far
above the tolerance, which the tests check both ways.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from processors.compute.generation import Sampling, choices_of, cut_at_stop, log_softmax, misfit
from processors.market.content import cid_of
from processors.market.jobs import InvalidSignature, recover, result_hash
from schemas.events import (
    GpuNodeRegistration,
    JobAssigned,
    JobResult,
    JobSubmitted,
    Outcome,
    VerdictCheck,
)

ACCEPTED: Outcome = "ACCEPTED"
REJECTED: Outcome = "REJECTED"
INCONCLUSIVE: Outcome = "INCONCLUSIVE"
GENERATION_SCHEME = "greedy-logits-f32-v1"
TENSOR_SCHEME = "tensor-sample-f32-v1"
EMBEDDING_SCHEME = "embedding-f32-v1"
CLASSIFICATION_SCHEME = "classification-f32-v1"
TRAINING_SCHEME = "training-loss-f32-v1"
#: A node's signed answer that it could not run the job (its output says why): refunded,
#: neither paid nor slashed, and not offered to another node.
FAILED_SCHEME = "failed-v1"
SAMPLES = 64
#: A job input without sampling fields: greedy, one choice.
GREEDY = Sampling()


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 1e-3
    atol: float = 1e-3

    def bound(self, reference: Any) -> Any:
        """The allowed absolute difference from `reference` (a number or an array)."""
        return self.atol + self.rtol * np.abs(reference)


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def record(self) -> VerdictCheck:
        return VerdictCheck(name=self.name, passed=self.passed, detail=self.detail)


# -- fingerprints -------------------------------------------------------------------------


def generation_fingerprint(chosen_logits: Sequence[float]) -> bytes:
    return np.asarray(chosen_logits, dtype="<f4").tobytes()


def embedding_fingerprint(vectors: np.ndarray) -> bytes:
    """Every value (a few hundred floats a text: all of them); classifiers' logits too."""
    return np.asarray(vectors, dtype="<f4").tobytes()


def tensor_fingerprint(outputs: bytes, job_id: bytes) -> bytes:
    """SAMPLES values of the flattened outputs at positions seeded by the job id."""
    flat = _flatten(outputs)
    if flat.size == 0:
        return b""
    rng = np.random.default_rng(int.from_bytes(job_id[:8]))
    return flat[rng.integers(0, flat.size, SAMPLES)].astype("<f4").tobytes()


def _flatten(npz: bytes) -> np.ndarray:
    with np.load(io.BytesIO(npz), allow_pickle=False) as arrays:
        parts = [arrays[n].astype(np.float64).ravel() for n in sorted(arrays.files)]
    return np.asarray(np.concatenate(parts) if parts else np.zeros(0), dtype=np.float64)


# -- failures -----------------------------------------------------------------------------


def failure_output(code: str, message: str) -> bytes:
    """The output of a failed job: `{"error": {"code", "message"}}`, as the market's routes
    answer errors."""
    return json.dumps({"error": {"code": code, "message": message}}, sort_keys=True).encode()


def failure_of(result: JobResult) -> dict[str, str] | None:
    """The error a node reported instead of an output; None for a result with one."""
    if result.fingerprint_scheme != FAILED_SCHEME:
        return None
    try:
        error = json.loads(result.output or b"")["error"]
        return {"code": str(error["code"]), "message": str(error["message"])}
    except (ValueError, KeyError, TypeError):
        return {"code": "failed", "message": "the node could not run the job"}


# -- checks -------------------------------------------------------------------------------


def check_signature(result: JobResult, chain_id: int) -> Check:
    try:
        signer = recover(result_hash(result, chain_id), result.signature)
    except InvalidSignature as exc:
        return Check("signature", False, str(exc))
    ok = signer == result.node
    return Check("signature", ok, "signed by the node" if ok else f"signed by 0x{signer.hex()}")


def check_assignment(result: JobResult, assignment: JobAssigned | None) -> Check:
    if assignment is None:
        return Check("assignment", False, "no assignment for this attempt")
    ok = result.node in assignment.nodes
    return Check("assignment", ok, f"attempt {result.attempt}" + ("" if ok else ": not assigned"))


def check_output(result: JobResult) -> Check:
    output = result.output
    if output is None:
        return Check("output", False, "output not inline")
    if hashlib.sha256(output).digest() != result.output_digest:
        return Check("output", False, "output bytes do not match the digest")
    if cid_of(output) != result.output_cid or len(output) != result.output_size:
        return Check("output", False, "output bytes do not match the CID or size")
    return Check("output", True, f"{len(output)} bytes, CID verified")


def check_failure(result: JobResult) -> Check | None:
    """A failed job's check (None for a result with an output): failed, not forged."""
    failure = failure_of(result)
    if failure is None:
        return None
    return Check("execution", False, f"{failure['code']}: {failure['message']}")


def check_deadline(result: JobResult, job: JobSubmitted) -> Check:
    late = result.completed_at_ms - job.deadline_ms
    return Check("deadline", late <= 0, "in time" if late <= 0 else f"{late} ms late")


def check_timing(result: JobResult, registration: GpuNodeRegistration | None, flops: int) -> Check:
    """The claimed hardware must be the registered one, and the compute time must not be
    shorter than the work divided by that hardware's peak rate."""
    if registration is None:
        return Check("timing", False, "node not registered")
    hardware = result.hardware
    names = {d.name for d in registration.devices} | {registration.cpu_model}
    if hardware.device_name not in names:
        return Check("timing", False, f"ran on {hardware.device_name!r}, not registered")
    peak = sum(d.peak_fp16_gflops for d in registration.devices) or _cpu_gflops(registration)
    floor_ms = flops // (peak * 1_000_000)  # 1 GFLOP/s is 1e6 FLOP per ms
    compute = result.timings.compute_ms
    ok = compute >= floor_ms
    return Check(
        "timing", ok, f"{compute} ms for {flops} FLOP (floor {floor_ms} ms at {peak} GFLOP/s)"
    )


def _cpu_gflops(registration: GpuNodeRegistration) -> int:
    # A generous ceiling: 64 FLOP per cycle per core (AVX-512 FMA) at 5 GHz.
    return max(1, registration.cpu_cores * 320)


def generation_flops(parameter_count: int, prompt_tokens: int, generated: int, cached: bool) -> int:
    """Forward FLOP of greedy decoding, 2·params per token run: with a key/value cache the
    prompt once and then each new token; without one, the whole sequence every step. The
    least work an honest node can have done, so a cached model must not be held to the
    uncached figure (a fast honest node would look impossibly fast)."""
    steps = max(generated, 1)
    whole_each_step = sum(prompt_tokens + i for i in range(steps))
    return 2 * parameter_count * (prompt_tokens + steps - 1 if cached else whole_each_step)


def check_generation(
    output: bytes,
    fingerprint: bytes,
    logits: Sequence[np.ndarray],
    prompt_tokens: int,
    eos_token_id: int | None,
    sampling: Sampling = GREEDY,
    decode: Callable[[Sequence[int]], str] | None = None,
    tol: Tolerance = Tolerance(),
) -> Check:
    """`logits`: the verifier's teacher-forced logits for each choice, one array per choice
    whose row i chose claimed token i (and whose last row follows the last token: the
    model's `continuation`); `decode`: the model's tokenizer (to check the texts), if at
    hand."""
    try:
        claimed = json.loads(output)
        choices = choices_of(claimed)
        tokens = [[int(t) for t in choice["token_ids"]] for choice in choices]
    except (ValueError, KeyError, TypeError, AttributeError):
        return Check("re-execution", False, "output is not a generation document")
    reported = np.frombuffer(fingerprint, dtype="<f4")
    if len(choices) != sampling.n or len(logits) != len(choices):
        return Check("re-execution", False, f"{len(choices)} choices, the job asked {sampling.n}")
    if len(reported) != sum(map(len, tokens)) or claimed.get("prompt_tokens") != prompt_tokens:
        return Check("re-execution", False, "fingerprint does not cover the generated tokens")
    at = 0
    for index, (choice, ids, rows) in enumerate(zip(choices, tokens, logits, strict=True)):
        where = f"choice {index}, " if sampling.n > 1 else ""
        why = _check_choice(choice, ids, rows, reported[at : at + len(ids)], sampling, index, tol)
        if why is None:
            why = _check_ending(
                choice,
                ids,
                rows[len(ids)],
                eos_token_id,
                sampling,
                index,
                decode,
                tol,
            )
        if why is not None:
            return Check("re-execution", False, where + why)
        at += len(ids)
    return Check("re-execution", True, f"{at} tokens within tolerance")


def _check_choice(
    choice: dict[str, Any],
    ids: list[int],
    rows: np.ndarray,
    reported: np.ndarray,
    sampling: Sampling,
    index: int,
    tol: Tolerance,
) -> str | None:
    """Why one choice's tokens (and their logprobs) are not what an honest run makes."""
    logprobs = choice.get("logprobs")
    if sampling.logprobs != (logprobs is not None) or (
        logprobs is not None and (not isinstance(logprobs, list) or len(logprobs) != len(ids))
    ):
        return "logprobs do not cover the tokens as asked"
    for i, token in enumerate(ids):
        row = rows[i]
        if not 0 <= token < row.size:
            return f"token {i} out of the vocabulary"
        bound = float(tol.bound(float(np.abs(row).max())))
        why = misfit(row, token, sampling, index, i, bound)
        if why is not None:
            return f"token {i} {why}"
        if abs(reported[i] - row[token]) > tol.bound(row[token]):
            return f"token {i}: reported logit {reported[i]:.4f} vs {row[token]:.4f}"
        if logprobs is not None:
            why = _check_logprobs(logprobs[i], row, token, sampling.top_logprobs, bound, tol)
            if why is not None:
                return f"token {i}: {why}"
    return None


def _check_logprobs(
    entry: Any, row: np.ndarray, token: int, top: int, bound: float, tol: Tolerance
) -> str | None:
    recomputed = log_softmax(row)
    # Each logit is off by at most `bound`, the normaliser too.
    allowed = 2 * bound + float(tol.bound(float(np.abs(recomputed[token]))))
    try:
        if int(entry["id"]) != token or abs(float(entry["logprob"]) - recomputed[token]) > allowed:
            return "reported logprob does not match"
        listed = [(int(e["id"]), float(e["logprob"])) for e in entry["top"]]
    except (KeyError, TypeError, ValueError):
        return "logprobs entry unreadable"
    if len(listed) != min(top, row.size):
        return f"{len(listed)} top logprobs, {top} asked"
    floor = np.sort(recomputed)[::-1][len(listed) - 1] if listed else 0.0
    for t, lp in listed:
        if not 0 <= t < row.size or abs(lp - recomputed[t]) > allowed:
            return f"top logprob of token {t} does not match"
        if recomputed[t] < floor - 2 * allowed:
            return f"token {t} is not among the {len(listed)} most likely"
    return None


def _check_ending(
    choice: dict[str, Any],
    ids: list[int],
    row: np.ndarray,
    eos_token_id: int | None,
    sampling: Sampling,
    index: int,
    decode: Callable[[Sequence[int]], str] | None,
    tol: Tolerance,
) -> str | None:
    """Why a choice's text or finish reason is not what its tokens make."""
    stopped_by_sequence = False
    if decode is not None:
        text, stopped_by_sequence = cut_at_stop(decode(ids), sampling.stop)
        if choice.get("text") != text:
            return "the text is not what the tokens decode to"
        if stopped_by_sequence and cut_at_stop(decode(ids[:-1]), sampling.stop)[1]:
            return "it went on past a stop sequence"
        for entry in choice.get("logprobs") or ():
            if entry.get("token") != decode([int(entry["id"])]):
                return "a logprob's token text is not the token's"
    if (
        choice.get("finish_reason") == "stop"
        and not stopped_by_sequence
        and eos_token_id is not None
    ):
        bound = float(tol.bound(float(np.abs(row).max())))
        if misfit(row, eos_token_id, sampling, index, len(ids), bound) is not None:
            return "stopped where the model would not"
    return None


def check_tensors(
    output: bytes,
    recomputed: bytes,
    fingerprint: bytes,
    job_id: bytes,
    tol: Tolerance = Tolerance(),
) -> Check:
    try:
        claimed, expected = _flatten(output), _flatten(recomputed)
    except (ValueError, OSError):
        return Check("re-execution", False, "output is not an .npz of tensors")
    if claimed.shape != expected.shape:
        return Check("re-execution", False, f"shape {claimed.shape} vs {expected.shape}")
    excess = np.abs(claimed - expected) - tol.bound(expected)
    if excess.size and excess.max() > 0:
        return Check("re-execution", False, f"{int((excess > 0).sum())} values out of tolerance")
    reported = np.frombuffer(fingerprint, dtype="<f4").astype(np.float64)
    sample = np.frombuffer(tensor_fingerprint(recomputed, job_id), dtype="<f4").astype(np.float64)
    if reported.shape != sample.shape or (np.abs(reported - sample) > tol.bound(sample)).any():
        return Check("re-execution", False, "fingerprint does not match the outputs")
    return Check("re-execution", True, f"{expected.size} values within tolerance")


def check_embeddings(
    output: bytes, recomputed: np.ndarray, fingerprint: bytes, tol: Tolerance = Tolerance()
) -> Check:
    """The claimed vectors against the verifier's, element-wise within the tolerance
    (normalised vectors' values are about 0.05, so `atol` dominates: honest float noise is
    ~1e-6, another text's vector is off by ~0.05)."""
    try:
        claimed = np.asarray(json.loads(output)["embeddings"], dtype=np.float64)
    except (ValueError, KeyError, TypeError):
        return Check("re-execution", False, "output is not an embeddings document")
    return _check_values(claimed, recomputed, fingerprint, tol)


def check_classification(
    output: bytes,
    recomputed: np.ndarray,
    fingerprint: bytes,
    scores: Callable[[np.ndarray], np.ndarray],
    labels: Sequence[str],
    tol: Tolerance = Tolerance(),
) -> Check:
    """The claimed logits against the verifier's, and every text's labels and scores as
    `scores` makes them from the claimed logits (likeliest first)."""
    try:
        document = json.loads(output)
        claimed = np.asarray(document["logits"], dtype=np.float64)
        listed = [[(str(e["label"]), float(e["score"])) for e in row] for row in document["labels"]]
    except (ValueError, KeyError, TypeError):
        return Check("re-execution", False, "output is not a classification document")
    check = _check_values(claimed, recomputed, fingerprint, tol)
    if not check.passed:
        return check
    if len(listed) != len(claimed):
        return Check("re-execution", False, "labels do not cover every text")
    names = [*labels, *map(str, range(len(labels), claimed.shape[-1]))]
    for i, (row, given) in enumerate(zip(claimed, listed, strict=True)):
        expected = scores(row)
        if len(given) != expected.size:
            return Check(
                "re-execution", False, f"text {i}: {len(given)} labels, not {expected.size}"
            )
        for label, score in given:
            index = names.index(label) if label in names else -1
            if index < 0 or abs(score - expected[index]) > tol.bound(expected[index]):
                return Check(
                    "re-execution", False, f"text {i}: score of {label!r} is not its logits'"
                )
        if any(a[1] < b[1] for a, b in itertools.pairwise(given)):
            return Check("re-execution", False, f"text {i}: labels are not likeliest first")
    return check


def _check_values(
    claimed: np.ndarray, recomputed: np.ndarray, fingerprint: bytes, tol: Tolerance
) -> Check:
    """Claimed values (in the output and its fingerprint) against the recomputed ones,
    element-wise within the tolerance."""
    expected = np.asarray(recomputed, dtype=np.float64)
    if claimed.shape != expected.shape:
        return Check("re-execution", False, f"shape {claimed.shape} vs {expected.shape}")
    excess = np.abs(claimed - expected) - tol.bound(expected)
    if excess.size and excess.max() > 0:
        return Check("re-execution", False, f"{int((excess > 0).sum())} values out of tolerance")
    reported = np.frombuffer(fingerprint, dtype="<f4").astype(np.float64)
    flat = claimed.ravel()
    if reported.shape != flat.shape or (np.abs(reported - flat) > tol.bound(flat)).any():
        return Check("re-execution", False, "fingerprint does not match the values")
    return Check("re-execution", True, f"{expected.size} values within tolerance")


def encoder_flops(parameter_count: int, tokens: int) -> int:
    """One forward pass, 2 FLOP per parameter per token."""
    return 2 * parameter_count * max(tokens, 1)


def training_flops(parameter_count: int, tokens: int, epochs: int) -> int:
    """Forward and backward: about 6 FLOP per parameter per token per epoch."""
    return 6 * parameter_count * tokens * max(epochs, 1)


def check_training_epoch(
    epoch: int,
    claimed: Mapping[str, np.ndarray],
    rerun: Mapping[str, np.ndarray],
    claimed_loss: float,
    rerun_loss: float,
    tol: Tolerance = Tolerance(rtol=1e-3, atol=1e-4),
) -> Check:
    """The weights the node published after `epoch` against the verifier's re-run of it."""
    name = f"epoch {epoch} re-run"
    if sorted(claimed) != sorted(rerun):
        return Check(name, False, "the checkpoint holds other tensors")
    for key in sorted(rerun):
        a, b = np.asarray(claimed[key], np.float64), np.asarray(rerun[key], np.float64)
        if a.shape != b.shape:
            return Check(name, False, f"{key}: shape {a.shape} vs {b.shape}")
        excess = np.abs(a - b) - tol.bound(b)
        if excess.size and excess.max() > 0:
            return Check(name, False, f"{key}: {int((excess > 0).sum())} weights out of tolerance")
    if abs(claimed_loss - rerun_loss) > tol.bound(rerun_loss):
        return Check(name, False, f"loss {claimed_loss:.6f} vs re-run {rerun_loss:.6f}")
    return Check(name, True, f"{len(rerun)} tensors and the loss within tolerance")


def outputs_agree(a: JobResult, b: JobResult, tol: Tolerance = Tolerance()) -> bool:
    """Whether two nodes' results for one job agree (redundant execution)."""
    if a.fingerprint_scheme != b.fingerprint_scheme:
        return False
    fa = np.frombuffer(a.fingerprint, dtype="<f4").astype(np.float64)
    fb = np.frombuffer(b.fingerprint, dtype="<f4").astype(np.float64)
    if fa.shape != fb.shape or (np.abs(fa - fb) > tol.bound(fb)).any():
        return False
    if a.fingerprint_scheme == GENERATION_SCHEME:
        return bool(_token_ids(a) == _token_ids(b))
    return True


def _token_ids(result: JobResult) -> list[list[int]]:
    return [c["token_ids"] for c in choices_of(json.loads(result.output or b""))]


def performance_bps(job: JobSubmitted, result: JobResult) -> int:
    """Full marks for finishing within half the time the job allowed, falling linearly to
    half marks at the deadline."""
    budget = max(job.deadline_ms - job.submitted_at_ms, 1)
    taken = max(result.completed_at_ms - job.submitted_at_ms, 0)
    if 2 * taken <= budget:
        return 10_000
    return int(max(5_000, 10_000 - 5_000 * (2 * taken - budget) // budget))


def outcome(checks: Sequence[Check]) -> Outcome:
    """REJECTED (cheating: not paid, slashed) when any check but the deadline or the
    execution fails; INCONCLUSIVE (late, or a job the node reported it could not run:
    refunded, not slashed) when only those do."""
    failed = {c.name for c in checks if not c.passed}
    if failed - {"deadline", "execution"}:
        return REJECTED
    return INCONCLUSIVE if failed else ACCEPTED
