"""Memory budgets: what a model or a job would need, from declared sizes only (pure core).

A hostile model or job must not be able to exhaust the memory of the process that imports
or runs it, so every figure here is read from what is declared (an ONNX graph's
initializer dims and tensor shapes, a manifest's cache shape, an `.npz` input's array
headers) and nothing is allocated to find it out. The figures are estimates that err
high: a job whose estimate is over its budget fails with `OverBudgetError` before it runs.
What the declarations cannot bound (a graph that computes a shape from its input) is
capped where it runs instead: `processors.compute.runtime` caps ONNX Runtime's own arena
at the same budget.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Bytes per element of the ONNX element types a graph may declare (`TensorProto` names,
#: lower case); an unknown one counts as 8, the widest numeric type.
DTYPE_BYTES = {
    "float": 4,
    "uint8": 1,
    "int8": 1,
    "uint16": 2,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "bool": 1,
    "float16": 2,
    "double": 8,
    "uint32": 4,
    "uint64": 8,
    "complex64": 8,
    "complex128": 16,
    "bfloat16": 2,
    "float8e4m3fn": 1,
    "float8e4m3fnuz": 1,
    "float8e5m2": 1,
    "float8e5m2fnuz": 1,
    "uint4": 1,
    "int4": 1,
}
FLOAT_BYTES = 4


class JobInputError(ValueError):
    """A job whose input no node could run (sampling out of range, no texts to embed);
    the message starts with the parameter's name. A node answers it with a signed
    failure, as it answers an `OverBudgetError`."""

    code = "invalid_request"


class OverBudgetError(MemoryError):
    """A model or job that would need more memory than its budget; nothing was allocated
    for it (or ONNX Runtime's capped arena refused the allocation)."""

    code = "over_budget"

    def __init__(self, what: str, needed: int, budget: int, detail: str | None = None) -> None:
        """`needed` 0: not known beforehand (`detail` then says what was refused)."""
        self.needed, self.budget = needed, budget
        if needed:
            text = f"{what} needs about {_mib(needed)}, over the budget of {_mib(budget)}"
        else:
            text = f"{what} ran out of its memory budget of {_mib(budget)}: {detail}"
        super().__init__(text)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB" if n < 1 << 40 else f"{n / (1 << 40):,.1f} TiB"


def machine_memory_bytes() -> int:
    """Physical memory of this machine (0 where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def default_budget(setting: int) -> int:
    """A budget setting's figure; 0 means three quarters of this machine's memory (the rest
    is the process's own: Python, the tokenizer, Kafka clients, the page cache)."""
    if setting > 0:
        return setting
    return max(machine_memory_bytes() * 3 // 4, 1 << 30)


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES.get(dtype.lower(), 8)


def tensor_bytes(dtype: str, shape: Sequence[int | str], dims: Mapping[str, int]) -> int | None:
    """Bytes of a tensor of `shape`, its symbolic dims bound by `dims`; None when a dim is
    unbound (the shape alone does not say)."""
    count = 1
    for dim in shape:
        if isinstance(dim, int) or str(dim).isdigit():
            value = int(dim)
        elif str(dim) in dims:
            value = dims[str(dim)]
        else:
            return None
        count *= max(value, 0)
    return count * dtype_bytes(dtype)


@dataclass(frozen=True)
class ArrayHeader:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        import numpy as np

        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def npz_headers(data: bytes) -> tuple[ArrayHeader, ...]:
    """The arrays of an `.npz` as their headers say, reading no array data (a compressed
    member can inflate to far more than the job's bytes). ValueError when it is not one."""
    import numpy as np
    from numpy.lib import format as npy

    headers = []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = npy.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = npy.read_array_header_1_0(member)
                    else:
                        shape, _, dtype = npy.read_array_header_2_0(member)
                name = info.filename.removesuffix(".npy")
                headers.append(ArrayHeader(name, np.dtype(dtype).str, tuple(shape)))
    except (zipfile.BadZipFile, OSError, EOFError, TypeError) as exc:
        raise ValueError(f"the input is not an .npz of arrays: {exc}") from None
    return tuple(headers)


def tensor_job_bytes(
    weights: int, inputs: Iterable[dict[str, Any]], outputs: Iterable[dict[str, Any]], data: bytes
) -> int:
    """A tensor job's estimate: the weights, its inputs as given (twice: as read, and as
    fed), and each output whose shape the inputs bind (twice: made, then written out)."""
    arrays = npz_headers(data)
    by_name = {a.name: a for a in arrays}
    dims: dict[str, int] = {}
    for spec in inputs:
        given = by_name.get(spec["name"])
        if given is None:
            continue
        for declared, actual in zip(spec["shape"], given.shape, strict=False):
            if not str(declared).isdigit():
                dims[str(declared)] = max(dims.get(str(declared), 0), actual)
    total = weights + 2 * sum(a.nbytes for a in arrays)
    for spec in outputs:
        size = tensor_bytes(spec["dtype"], spec["shape"], dims)
        total += 2 * (size or 0)
    return total


def generation_bytes(
    weights: int,
    vocabulary: int,
    positions: int,
    prompt_tokens: int,
    kv_cache: Mapping[str, int] | None,
) -> int:
    """A generation job's estimate: the weights, the prompt's logits (every position's row
    comes back from the first pass), and the key/value cache at its longest (past in and
    present out, keys and values) — or, without a cache, each pass's logits over the whole
    sequence."""
    logits = (prompt_tokens if kv_cache else positions) * vocabulary * FLOAT_BYTES
    cache = 0
    if kv_cache:
        per_position = kv_cache["layers"] * kv_cache["heads"] * kv_cache["head_dim"]
        cache = 4 * per_position * positions * FLOAT_BYTES
    return weights + 2 * logits + cache


def embedding_bytes(weights: int, texts: int, tokens: int, width: int, heads: int) -> int:
    """An embedding job's estimate: the weights, and per layer's pass over the padded batch
    its hidden states (~12 of them across attention and the feed-forward block) and its
    attention scores (softmax in and out), all live at once at worst."""
    hidden = 12 * texts * tokens * width * FLOAT_BYTES
    scores = 2 * texts * heads * tokens * tokens * FLOAT_BYTES
    return weights + hidden + scores
