"""Model import: a Hugging Face directory or an ONNX file becomes content-addressed blocks.

`import_model` loads a local Hugging Face directory with transformers' `from_pretrained`
(offline: nothing is fetched), exports it to ONNX with the dynamo exporter (`input_ids`
[batch, sequence] and the key/value cache so far in; `logits` [batch, sequence, vocabulary]
and the cache with the new positions out; see `export_causal_lm`), and
stores in the blockstore: the ONNX graph (weights inline), the tokenizer files and the source
weights and config (what training jobs start from), each as a deterministic tar or raw file
split into 1 MiB raw blocks. A plain `.onnx` file is imported as a tensor model: its inputs
and outputs are read from the graph.

The manifest (canonical JSON, itself a block) is the model's truth: its CID is what the
ledger's `ModelRegistry` records and what every worker verifies against.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processors.market.content import Blockstore, Chunk
from schemas.events import ModelChunk, ModelManifest, TensorSpec

TEXT_GENERATION = "text-generation"
#: The cache inputs of a text model's graph (see `KvCache`); a graph without them has none.
PAST_KEYS, PAST_VALUES = "past_keys", "past_values"
TENSOR = "tensor"
RUNTIME_OVERHEAD_BYTES = 64 << 20
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


class ModelImportError(ValueError):
    """A path that cannot be imported as a model, with the reason."""


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest document."""

    document: dict[str, Any]
    cid: str

    @property
    def task(self) -> str:
        return str(self.document["task"])

    def chunks(self, part: str) -> tuple[Chunk, ...]:
        return tuple(Chunk(**c) for c in self.document[part]["chunks"])


def deterministic_tar(files: dict[str, bytes]) -> bytes:
    """A tar of `files` that depends only on their names and contents."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return out.getvalue()


def untar(data: bytes, into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")


def canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def store_part(store: Blockstore, data: bytes) -> dict[str, Any]:
    """Store a file as chunks plus an index block (its chunk list), whose CID names it."""
    part: dict[str, Any] = {"size": len(data), "chunks": [c.__dict__ for c in store.put_file(data)]}
    return {**part, "cid": store.put(canonical_json(part))}


def _tensor_specs(values: Any) -> list[dict[str, Any]]:
    from onnx import TensorProto

    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_param or str(d.dim_value) for d in tensor.shape.dim]
        dtype = TensorProto.DataType.Name(tensor.elem_type).lower()
        specs.append({"name": value.name, "dtype": dtype, "shape": shape})
    return specs


def _onnx_facts(model_bytes: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load_from_string(model_bytes).graph
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelImportError(f"not a readable ONNX model: {exc}") from None
    parameters = sum(int(numpy_helper.to_array(t).size) for t in graph.initializer)
    return _tensor_specs(graph.input), _tensor_specs(graph.output), parameters


@dataclass(frozen=True)
class KvCache:
    """The shape of a text model's key/value cache, as its ONNX graph takes and returns it:
    `past_keys`/`past_values` in, `present_keys`/`present_values` out, each
    [layers, batch, heads, positions, head_dim]."""

    layers: int
    heads: int
    head_dim: int

    def empty(self, batch: int = 1) -> Any:
        import numpy as np

        return np.zeros((self.layers, batch, self.heads, 0, self.head_dim), dtype=np.float32)


def _kv_cache_of(model: Any) -> KvCache:
    """The cache shape of a Hugging Face model, from one forward pass; raises when its
    cache is not one uniform key/value pair per layer (sliding windows, hybrid caches)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.zeros((1, 3), dtype=torch.int64), use_cache=True)
    layers = getattr(out.past_key_values, "layers", None)
    if not layers:
        raise TypeError(f"no per-layer cache ({type(out.past_key_values).__name__})")
    shapes = {(tuple(layer.keys.shape), tuple(layer.values.shape)) for layer in layers}
    if len(shapes) != 1:
        raise TypeError(f"layers' caches differ in shape: {sorted(shapes)}")
    ((keys, values),) = shapes
    if len(keys) != 4 or keys != values or keys[2] != 3:
        raise TypeError(f"unexpected cache shape {keys}")
    return KvCache(len(layers), int(keys[1]), int(keys[3]))


def _export(
    module: Any, example: tuple[Any, ...], names: tuple[list[str], list[str]], dims: dict[str, Any]
) -> bytes:
    import onnx
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            dynamo=True,
            input_names=names[0],
            output_names=names[1],
            dynamic_shapes=dims,
            verbose=False,
        )
        # Fold any external-data file back in: a model is one graph blob, then chunked.
        return bytes(onnx.load(str(path), load_external_data=True).SerializeToString())


def export_causal_lm(
    directory: Path, progress: Callable[[str], None]
) -> tuple[bytes, Any, KvCache | None]:
    """Load a Hugging Face causal LM from `directory` (offline) and export it to ONNX bytes.

    The graph carries the key/value cache where the model's cache allows it: one graph
    then serves a whole sequence (an empty past) and each generated token after it (the
    past so far), so generating n tokens costs n single-token passes instead of n passes
    over ever longer sequences. Models whose cache does not fit that shape get the plain
    graph (logits only) and generate without a cache.
    """
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    try:
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelImportError(
            f"{directory}: not a loadable causal language model: {exc}"
        ) from None
    model.eval()  # type: ignore[no-untyped-call]

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any) -> Any:
            return self.inner(input_ids=input_ids, use_cache=False).logits

    class CachedStep(torch.nn.Module):
        def __init__(self, inner: Any, layers: int) -> None:
            super().__init__()
            self.inner, self.layers = inner, layers

        def forward(self, input_ids: Any, past_keys: Any, past_values: Any) -> Any:
            cache = DynamicCache(config=self.inner.config)
            for i in range(self.layers):
                cache.update(past_keys[i], past_values[i], i)
            past = past_keys.shape[3]
            positions = torch.arange(past, past + input_ids.shape[1]).unsqueeze(0)
            out = self.inner(
                input_ids=input_ids, past_key_values=cache, position_ids=positions, use_cache=True
            )
            present = out.past_key_values.layers
            keys = torch.stack([present[i].keys for i in range(self.layers)])
            values = torch.stack([present[i].values for i in range(self.layers)])
            return out.logits, keys, values

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        cache = _kv_cache_of(model)
        shape = (cache.layers, 1, cache.heads, 5, cache.head_dim)
        progress("exporting to ONNX with a key/value cache (torch.onnx.export, dynamo)")
        positions = torch.export.Dim("past")
        graph = _export(
            CachedStep(model, cache.layers),
            # Two tensors, not one twice: the exporter folds aliased inputs into one.
            (torch.zeros((1, 3), dtype=torch.int64), torch.zeros(shape), torch.zeros(shape)),
            (
                ["input_ids", PAST_KEYS, PAST_VALUES],
                ["logits", "present_keys", "present_values"],
            ),
            {
                "input_ids": {0: batch, 1: sequence},
                PAST_KEYS: {1: batch, 3: positions},
                PAST_VALUES: {1: batch, 3: positions},
            },
        )
        return graph, model.config, cache
    except Exception as exc:  # the exporter fails in many ways on caches it cannot trace
        progress(f"no key/value cache in the graph ({type(exc).__name__}: {exc}); plain graph")
    progress("exporting to ONNX (torch.onnx.export, dynamo)")
    graph = _export(
        Logits(model),
        (torch.zeros((2, 8), dtype=torch.int64),),
        (["input_ids"], ["logits"]),
        {"input_ids": {0: batch, 1: sequence}},
    )
    return graph, model.config, None


def import_model(
    path: Path,
    name: str,
    store: Blockstore,
    progress: Callable[[str], None] = lambda _: None,
) -> Manifest:
    """Import `path` into `store`; the returned manifest is stored as a block too."""
    path = Path(path)
    if path.is_dir():
        missing = [f for f in ("config.json", "tokenizer.json") if not (path / f).exists()]
        if missing:
            raise ModelImportError(
                f"{path}: a Hugging Face model directory needs {', '.join(missing)}"
            )
        progress(f"loading {path} with transformers (offline)")
        onnx_bytes, config, cache = export_causal_lm(path, progress)
        tokenizer = {f: (path / f).read_bytes() for f in _TOKENIZER_FILES if (path / f).exists()}
        source = {
            p.name: p.read_bytes()
            for p in sorted(path.iterdir())
            if p.is_file() and p.name not in _TOKENIZER_FILES
        }
        inputs, outputs, parameters = _onnx_facts(onnx_bytes)
        document: dict[str, Any] = {
            "task": TEXT_GENERATION,
            "model_type": str(config.model_type),
            "max_positions": int(
                getattr(config, "n_positions", 0) or config.max_position_embeddings
            ),
            "eos_token_id": config.eos_token_id,
        }
        if cache is not None:
            document["kv_cache"] = dataclasses.asdict(cache)
        progress("storing tokenizer and source weights")
        document["tokenizer"] = store_part(store, deterministic_tar(tokenizer))
        document["source"] = store_part(store, deterministic_tar(source))
    elif path.suffix == ".onnx" and path.is_file():
        onnx_bytes = path.read_bytes()
        inputs, outputs, parameters = _onnx_facts(onnx_bytes)
        document = {"task": TENSOR, "model_type": "onnx"}
    else:
        raise ModelImportError(f"{path}: expected a Hugging Face model directory or a .onnx file")
    progress(f"chunking {len(onnx_bytes)} bytes of ONNX into content-addressed blocks")
    document.update(
        name=name,
        format="onnx",
        onnx=store_part(store, onnx_bytes),
        inputs=inputs,
        outputs=outputs,
        parameter_count=parameters,
        # fp32 weights, held once by the runtime, plus activations and runtime overhead.
        vram_required_bytes=2 * len(onnx_bytes) + RUNTIME_OVERHEAD_BYTES,
    )
    cid = store.put(canonical_json(document))
    return Manifest(document, cid)


def load_manifest(data: bytes, cid: str) -> Manifest:
    return Manifest(json.loads(data), cid)


def manifest_record(
    manifest: Manifest, owner: bytes, version: int, registered_at_ms: int
) -> ModelManifest:
    """The `lattice.models` event for a registered manifest."""
    d = manifest.document
    tokenizer = d.get("tokenizer")
    return ModelManifest(
        model_id=d["name"],
        name=d["name"],
        version=version,
        owner=owner,
        model_type=d["model_type"],
        format=d["format"],
        manifest_cid=manifest.cid,
        chunks=tuple(ModelChunk(**c) for c in d["onnx"]["chunks"]),
        total_bytes=d["onnx"]["size"],
        parameter_count=d["parameter_count"],
        vram_required_bytes=d["vram_required_bytes"],
        inputs=tuple(_tensor_spec(t) for t in d["inputs"]),
        outputs=tuple(_tensor_spec(t) for t in d["outputs"]),
        tokenizer_cid=tokenizer["cid"] if tokenizer else None,
        registered_at_ms=registered_at_ms,
    )


def _tensor_spec(document: dict[str, Any]) -> TensorSpec:
    shape = tuple(str(d) for d in document["shape"])
    return TensorSpec(name=document["name"], dtype=document["dtype"], shape=shape)
