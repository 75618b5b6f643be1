"""Large models: a graph whose tensors declare more than `EXTERNAL_DATA_BYTES` is stored as
its structure plus one weights file (ONNX external data), streamed into blocks and back, and
runs exactly as the same graph stored whole. The threshold is lowered here so that small real
models take that path; `bench/bench_large_model.py` imports and runs one over 2 GiB. A graph
pointing its tensors anywhere but its own weights file is refused by the worker."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from processors.compute import models
from processors.compute.models import (
    WEIGHTS_FILE,
    canonical_json,
    external_locations,
    import_model,
    store_part,
)
from processors.compute.runtime import BlockSource, FetchError, ModelCache
from processors.market.content import Blockstore

PAYLOAD = {"prompt": "the quick brown fox", "max_tokens": 8}


def tensor_model(directory: Path, width: int = 64) -> Path:
    """A two-matmul graph whose weights are external data in a file of their own."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), name)
        for name in ("a", "b")
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "a"], ["h"]),
            helper.make_node("MatMul", ["h", "b"], ["y"]),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        weights,
    )
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(directory / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    return directory / "model.onnx"


def npz(**arrays: Any) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def test_a_large_graph_keeps_its_tensors_in_a_weights_file_and_runs_as_the_whole_one(
    tiny_gpt2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Blockstore(tmp_path / "store")
    whole = import_model(tiny_gpt2, "tiny", store)
    monkeypatch.setattr(models, "EXTERNAL_DATA_BYTES", 0)
    said: list[str] = []
    split = import_model(tiny_gpt2, "tiny", store, said.append)
    assert "weights" not in whole.document and "weights" in split.document
    structure = BlockSource(store).part(split, "onnx")
    assert external_locations(structure) == {WEIGHTS_FILE}
    # Tensors under a KiB stay in the graph; the rest moved out, byte for byte.
    moved = whole.document["onnx"]["size"] - len(structure)
    assert 0 < moved <= split.document["weights"]["size"] < moved * 1.01
    assert any("MiB of weights.bin" in line for line in said)
    assert import_model(tiny_gpt2, "tiny", store).cid == split.cid  # the same bytes again
    runs = []
    for manifest in (whole, split):
        cache = ModelCache(BlockSource(store), tmp_path / manifest.cid, 1, use_gpu=False)
        model, _ = cache.load(manifest.cid)
        runs.append(model.generate(PAYLOAD))
    assert runs[0].output() == runs[1].output()
    assert runs[0].chosen_logits == runs[1].chosen_logits


def test_an_onnx_file_with_external_data_is_laid_out_anew_and_gives_the_same_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    source = tensor_model(tmp_path / "given")
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    (expected,) = ort.InferenceSession(str(source)).run(None, {"x": x})
    monkeypatch.setattr(models, "EXTERNAL_DATA_BYTES", 0)
    store = Blockstore(tmp_path / "store")
    manifest = import_model(source, "two", store)
    assert manifest.document["weights"]["size"] == 2 * 64 * 64 * 4
    cache = ModelCache(BlockSource(store), tmp_path / "worker", 1, use_gpu=False)
    model, _ = cache.load(manifest.cid)
    with np.load(io.BytesIO(model.run_tensors(npz(x=x)))) as out:
        np.testing.assert_array_equal(out["y"], expected)


@pytest.mark.parametrize("weights", [True, False])
def test_a_graph_reading_tensors_from_elsewhere_is_refused_by_the_worker(
    tmp_path: Path, weights: bool
) -> None:
    import onnx

    given = onnx.load(str(tensor_model(tmp_path / "given")), load_external_data=False)
    for tensor in given.graph.initializer:  # onnx itself refuses to write such a location
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    store = Blockstore(tmp_path / "store")
    document: dict[str, Any] = {
        "name": "hostile",
        "task": "tensor",
        "model_type": "onnx",
        "format": "onnx",
        "onnx": store_part(store, given.SerializeToString()),
        "inputs": [],
        "outputs": [],
        "parameter_count": 0,
        "vram_required_bytes": 0,
    }
    if weights:
        document["weights"] = store_part(store, b"\0" * 16)
    cid = store.put(canonical_json(document))
    cache = ModelCache(BlockSource(store), tmp_path / "worker", 1, use_gpu=False)
    with pytest.raises(FetchError, match=r"reads tensors from \['../secret.bin'\]"):
        cache.load(cid)
    assert json.loads(store.get(cid))["name"] == "hostile"


def test_loading_measures_what_a_model_takes_and_the_estimate_covers_it(tmp_path: Path) -> None:
    store = Blockstore(tmp_path / "store")
    manifest = import_model(tensor_model(tmp_path / "given", width=2048), "wide", store)
    cache = ModelCache(BlockSource(store), tmp_path / "worker", 1, use_gpu=False)
    model, _ = cache.load(manifest.cid)
    weights = 2 * 2048 * 2048 * 4  # 32 MiB
    assert weights * 0.9 <= model.measured_bytes <= model.weights_bytes
