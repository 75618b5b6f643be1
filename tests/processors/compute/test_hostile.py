"""Hostile model files at import: each gets a one-line `ModelImportError`, and the CLI
prints it and exits 2. The models are real ONNX graphs and a real Hugging Face directory,
built here; nothing is mocked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from processors.compute.models import ModelImportError, import_model
from processors.market.content import Blockstore

ROOT = Path(__file__).resolve().parents[3]


def add_model(weights: np.ndarray) -> object:
    """y = x + w, w an initializer: a graph with real weights."""
    from onnx import TensorProto, helper, numpy_helper

    size = int(weights.size)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write(model: object, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())  # type: ignore[attr-defined]
    return path


def external(model: object, location: str, dims: list[int] | None = None) -> object:
    """The model with its initializer's data moved to `location` (dims as declared)."""
    from onnx import TensorProto

    tensor = model.graph.initializer[0]  # type: ignore[attr-defined]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    if dims is not None:
        del tensor.dims[:]
        tensor.dims.extend(dims)
    return model


def refused(path: Path, match: str, budget: int = 0) -> str:
    with pytest.raises(ModelImportError, match=match) as caught:
        import_model(path, "hostile", Blockstore(path.parent / "store"), memory_budget=budget)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_sound_graph_with_external_data_is_imported_whole(tmp_path: Path) -> None:
    weights = np.arange(256, dtype=np.float32)
    (tmp_path / "w.bin").write_bytes(weights.tobytes())
    path = write(external(add_model(weights), "w.bin"), tmp_path / "m.onnx")
    manifest = import_model(path, "sound", Blockstore(tmp_path / "store"))
    assert manifest.document["parameter_count"] == 256
    assert manifest.document["onnx"]["size"] > weights.nbytes  # the data folded in


def test_a_truncated_graph_is_refused(tmp_path: Path) -> None:
    data = add_model(np.ones(4096)).SerializeToString()  # type: ignore[attr-defined]
    for cut in (len(data) // 2, len(data) - 7, 3):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        refused(path, "truncated or corrupt")
    path = tmp_path / "noise.onnx"
    path.write_bytes(os.urandom(512))
    refused(path, "ONNX model")


def test_declared_dimensions_far_over_memory_are_refused_without_reading_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "w.bin").write_bytes(b"\x00" * 16)  # far less than declared
    huge = external(add_model(np.ones(4)), "w.bin", dims=[1 << 20, 1 << 20])
    message = refused(write(huge, tmp_path / "huge.onnx"), "over the")
    assert "declares 4,398,046,511," in message  # 4 TiB of weights, and x and y
    # Inline weights count too, against the budget given.
    refused(write(add_model(np.ones(1 << 16)), tmp_path / "big.onnx"), "over the", 1 << 16)


def test_external_data_outside_the_directory_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 16)
    models = tmp_path / "models"
    models.mkdir()
    for location in ("../secret.bin", str(secret)):
        path = write(external(add_model(np.ones(4)), location), models / "m.onnx")
        refused(path, "outside the model's directory")
    (models / "link.bin").symlink_to(secret)
    path = write(external(add_model(np.ones(4)), "link.bin"), models / "m.onnx")
    refused(path, "outside the model's directory")


@pytest.fixture
def hf_copy(tiny_gpt2: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_gpt2, tmp_path / "hf"))


def test_a_directory_without_its_tokenizer_is_refused(hf_copy: Path) -> None:
    (hf_copy / "tokenizer.json").unlink()
    refused(hf_copy, r"needs its tokenizer \(tokenizer.json\)")


def test_a_tokenizer_linked_out_of_the_directory_is_refused(hf_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.json"
    shutil.move(hf_copy / "tokenizer.json", outside)
    (hf_copy / "tokenizer.json").symlink_to(outside)
    refused(hf_copy, "outside the model directory")


def test_a_config_declaring_a_model_far_over_memory_is_refused(hf_copy: Path) -> None:
    config = (hf_copy / "config.json").read_text()
    (hf_copy / "config.json").write_text(config.replace('"n_embd": 32', '"n_embd": 1000000'))
    refused(hf_copy, "declare .* bytes of parameters")


def test_truncated_weights_are_refused(hf_copy: Path) -> None:
    weights = hf_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused(hf_copy, "truncated")


def test_the_cli_prints_the_reason_on_one_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "cut.onnx"
    path.write_bytes(add_model(np.ones(1024)).SerializeToString()[:700])  # type: ignore[attr-defined]
    lattice = Path(sys.executable).parent / "lattice"
    command = [str(lattice), "model", "import", str(path), "--name", "cut"]
    command += ["--data-dir", str(tmp_path / "data"), "--rpc", "http://127.0.0.1:9"]
    command += ["--dev-account", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lattice: error: "), done.stderr
    assert "truncated or corrupt" in lines[0] and "Traceback" not in done.stderr
