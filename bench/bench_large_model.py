"""A model over protobuf's 2 GiB limit: imported, stored, fetched, loaded and run.

    .venv/bin/python bench/bench_large_model.py [--gib 2.25] [--dir /tmp/large-model]

Builds a tensor model (a chain of square MatMuls with random fp32 weights) whose weights
total `--gib` GiB, saved as an `.onnx` file with its tensors as external data, then:

- import: `import_model` (the `lattice model import` path) lays it out as a graph plus one
  weights file and streams both into content-addressed blocks;
- load: a worker's `ModelCache` with an empty work directory writes the graph and streams
  the weights out of the blocks, then ONNX Runtime opens it;
- run: one inference, compared with ONNX Runtime run on the original file (the peer).

Prints each step's seconds, the sizes, and this process's peak resident memory after each
(ru_maxrss). Wall-clock figures from this machine; nothing else should run beside it.
"""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from processors.compute.models import WEIGHTS_FILE, import_model  # noqa: E402
from processors.compute.runtime import BlockSource, ModelCache  # noqa: E402
from processors.market.content import Blockstore  # noqa: E402

WIDTH = 8192  # one layer's weights: 8192 x 8192 fp32 = 256 MiB


def peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def build(directory: Path, gib: float) -> Path:
    """The model file; its weights written layer by layer, never all in one array."""
    import onnx
    from onnx import TensorProto, helper

    layers = max(1, round(gib * (1 << 30) / (WIDTH * WIDTH * 4)))
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    initializers, nodes = [], []
    with (directory / "weights.data").open("wb") as data:
        for i in range(layers):
            layer = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / WIDTH**0.5).tobytes()
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[WIDTH, WIDTH])
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", "weights.data"), ("offset", str(data.tell()))):
                tensor.external_data.add(key=key, value=value)
            tensor.external_data.add(key="length", value=str(len(layer)))
            data.write(layer)
            initializers.append(tensor)
            nodes.append(
                helper.make_node("MatMul", [f"h{i}" if i else "x", f"w{i}"], [f"h{i + 1}"])
            )
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info(f"h{layers}", TensorProto.FLOAT, [1, WIDTH])],
        initializers,
    )
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(directory / "model.onnx"))
    return directory / "model.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=2.25)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="large-model-"))
    try:
        started = time.perf_counter()
        source = build(root / "given", args.gib)
        size = (root / "given" / "weights.data").stat().st_size
        print(
            f"built      {time.perf_counter() - started:7.1f} s  weights {size / (1 << 30):.2f} GiB"
        )

        store = Blockstore(root / "store")
        started = time.perf_counter()
        manifest = import_model(source, "large", store, lambda line: print("   ", line))
        weights = manifest.document.get("weights", {"size": 0, "chunks": []})
        print(
            f"import     {time.perf_counter() - started:7.1f} s  graph "
            f"{manifest.document['onnx']['size']:,} B + {WEIGHTS_FILE} {weights['size']:,} B in "
            f"{len(weights['chunks'])} blocks; peak RSS {peak_mib():,} MiB"
        )

        started = time.perf_counter()
        cache = ModelCache(BlockSource(store), root / "worker", 2, use_gpu=False)
        model, _ = cache.load(manifest.cid)
        print(
            f"load       {time.perf_counter() - started:7.1f} s  peak RSS {peak_mib():,} MiB; "
            f"memory estimated {model.weights_bytes >> 20:,} MiB, measured "
            f"{model.measured_bytes >> 20:,} MiB"
        )

        x = np.random.default_rng(1).standard_normal((1, WIDTH)).astype(np.float32)
        buffer = io.BytesIO()
        np.savez(buffer, x=x)
        started = time.perf_counter()
        with np.load(io.BytesIO(model.run_tensors(buffer.getvalue()))) as out:
            ours = next(iter(out.values()))
        print(f"run        {time.perf_counter() - started:7.3f} s")
        del model, cache

        import onnxruntime as ort

        started = time.perf_counter()
        session = ort.InferenceSession(str(source))
        (theirs,) = session.run(None, {"x": x})
        print(f"peer (ONNX Runtime on the original file) {time.perf_counter() - started:7.1f} s")
        diff = float(np.abs(ours - theirs).max())
        print(f"same output: {np.array_equal(ours, theirs)} (max |diff| {diff:.3g})")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
