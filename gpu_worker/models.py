"""Model import: a Hugging Face directory or an ONNX file becomes content-addressed blocks.

`import_model` loads a local Hugging Face directory with transformers' `from_pretrained`
(offline: nothing is fetched), exports it to ONNX with the dynamo exporter (one input,
`input_ids` [batch, sequence]; one output, `logits` [batch, sequence, vocabulary]), and
stores in the blockstore: the ONNX graph (weights inline), the tokenizer files and the source
weights and config (what training jobs start from), each as a deterministic tar or raw file
split into 1 MiB raw blocks. A plain `.onnx` file is imported as a tensor model: its inputs
and outputs are read from the graph.

The manifest (canonical JSON, itself a block) is the model's truth: its CID is what the
ledger's `ModelRegistry` records and what every worker verifies against.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processors.market.content import Blockstore, Chunk

TEXT_GENERATION = "text-generation"
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


def export_causal_lm(directory: Path, progress: Callable[[str], None]) -> tuple[bytes, Any]:
    """Load a Hugging Face causal LM from `directory` (offline) and export it to ONNX bytes."""
    import onnx
    import torch
    from transformers import AutoModelForCausalLM

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

    example = torch.zeros((2, 8), dtype=torch.int64)
    progress("exporting to ONNX (torch.onnx.export, dynamo)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
        torch.onnx.export(
            Logits(model).eval(),
            (example,),
            str(path),
            dynamo=True,
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": dims},
            verbose=False,
        )
        # Fold any external-data file back in: a model is one graph blob, then chunked.
        graph = onnx.load(str(path), load_external_data=True)
    return graph.SerializeToString(), model.config


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
        onnx_bytes, config = export_causal_lm(path, progress)
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
) -> dict[str, Any]:
    """The `lattice.models.ModelManifest` event for a registered manifest."""
    d = manifest.document
    tokenizer = d.get("tokenizer")
    return {
        "model_id": d["name"],
        "name": d["name"],
        "version": version,
        "owner": owner,
        "model_type": d["model_type"],
        "format": d["format"],
        "manifest_cid": manifest.cid,
        "chunks": d["onnx"]["chunks"],
        "total_bytes": d["onnx"]["size"],
        "parameter_count": d["parameter_count"],
        "vram_required_bytes": d["vram_required_bytes"],
        "inputs": d["inputs"],
        "outputs": d["outputs"],
        "tokenizer_cid": tokenizer["cid"] if tokenizer else None,
        "registered_at_ms": registered_at_ms,
        "cause": None,
    }
