"""Model import: a Hugging Face directory or an ONNX file becomes content-addressed blocks.

`import_model` loads a local Hugging Face directory with transformers' `from_pretrained`
(offline: nothing is fetched), exports it to ONNX with the dynamo exporter, and
stores it. The task is read from the directory: a sentence-transformers directory
(`modules.json`) is an embedding model (the encoder with its pooling and normalising in
one graph: `export_sentence_embedder`), one whose `architectures` name a
`...ForSequenceClassification` a text classifier (`export_text_classifier`), an image
classifier or CLIP-style pair likewise, an `is_encoder_decoder` config a T5-style
text2text model (`export_seq2seq`); any other is a causal LM (`input_ids` [batch,
sequence] and the key/value cache so far in; `logits` [batch, sequence, vocabulary] and
the cache with the new positions out; see `export_causal_lm`). It stores in the
blockstore: the ONNX graph (`Graph`: weights inline, or for a graph over
`EXTERNAL_DATA_BYTES` in a weights file of their own), the tokenizer files and the source
weights and config (what training jobs start from), each as a deterministic tar or raw file
split into 1 MiB raw blocks, read from disk a block at a time. A plain `.onnx` file is
imported as a tensor model: its inputs and outputs are read from the graph.

Files to import are untrusted (a model is anyone's upload): before anything large is read
or allocated, a truncated or corrupt graph, tensor or weights file, dimensions declaring
more than the memory budget (from initializer dims, fixed tensor shapes, safetensors
headers and the config's sizes), a directory without its config or tokenizer, and any file,
link or external-data location outside the model's directory are each a `ModelImportError`
with a one-line reason.

The manifest (canonical JSON, itself a block) is the model's truth: its CID is what the
ledger's `ModelRegistry` records and what every worker verifies against.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from processors.compute.budget import default_budget, dtype_bytes, tensor_bytes
from processors.market import unixfs
from processors.market.content import Blockstore, Chunk
from schemas.events import ModelChunk, ModelManifest, TensorSpec

TEXT_GENERATION = "text-generation"
#: Text from text by an encoder and a decoder (T5-style): the prompt is encoded once and
#: the decoder generates, as a causal LM does, from the model's start token.
SEQ2SEQ = "text2text-generation"
#: The tasks whose jobs are generations (sampled, streamed, verified token by token).
GENERATIVE = (TEXT_GENERATION, SEQ2SEQ)
#: Sentence embeddings (a sentence-transformers directory: an encoder, pooling, normalising).
EMBEDDING = "embedding"
#: Labels and scores of texts (an encoder with a sequence-classification head).
CLASSIFICATION = "text-classification"
#: Labels and scores of images (a vision encoder with an image-classification head).
IMAGE_CLASSIFICATION = "image-classification"
#: Images scored against texts given with each job (CLIP-style: zero-shot labels).
IMAGE_TEXT = "zero-shot-image-classification"
#: What a Hugging Face directory may be imported as (`import_model`'s `task`).
DIRECTORY_TASKS = (
    TEXT_GENERATION,
    SEQ2SEQ,
    EMBEDDING,
    CLASSIFICATION,
    IMAGE_CLASSIFICATION,
    IMAGE_TEXT,
)
#: The cache inputs of a text model's graph (see `KvCache`); a graph without them has none.
PAST_KEYS, PAST_VALUES = "past_keys", "past_values"
#: A cached graph's mask over the past and the new tokens (0: padding). Graphs exported
#: before it take none: their batches need prompts of one length.
ATTENTION_MASK = "attention_mask"
TENSOR = "tensor"
#: A graph whose tensors declare more than this keeps them in `WEIGHTS_FILE` beside it
#: (protobuf cannot serialise one message over 2 GiB; half of that leaves room).
EXTERNAL_DATA_BYTES = 1 << 30
GRAPH_FILE, WEIGHTS_FILE = "model.onnx", "weights.bin"
RUNTIME_OVERHEAD_BYTES = 64 << 20
#: The files that turn a job's input into tensors (stored as the manifest's "tokenizer").
_TOKENIZER_FILES = (
    "preprocessor_config.json",
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


def deterministic_tar(files: dict[str, Path], out: BinaryIO) -> None:
    """Write a tar of `files` (name in the tar: the file) that depends only on their names
    and contents, read a block at a time (a model's source weights may be gigabytes)."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = files[name].stat().st_size
            info.mode = 0o644
            with files[name].open("rb") as data:
                tar.addfile(info, data)


def untar(data: bytes, into: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")


def canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def store_part(store: Blockstore, data: bytes) -> dict[str, Any]:
    """Store a file as chunks plus an index block (its chunk list), whose CID names it;
    `ipfs` is the CID Kubo's `ipfs add` gives the same bytes."""
    return _indexed(store, store.put_file(data), len(data), unixfs.cid_of_file(data))


def store_path(
    store: Blockstore, path: Path, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """`store_part` of a file read from disk a chunk at a time, saying how far it is."""
    size = path.stat().st_size
    step = max(size // 20, 64 << 20)
    said = [0]

    def stored(done: int) -> None:
        if done - said[0] >= step or done == size:
            said[0] = done
            progress(f"stored {done >> 20:,} of {size >> 20:,} MiB of {path.name}")

    with path.open("rb") as stream:
        chunks = store.put_stream(stream, stored)
    with path.open("rb") as stream:  # a second read: Kubo's chunks are not the store's
        ipfs = unixfs.add(iter(lambda: stream.read(unixfs.CHUNK), b"")).cid
    return _indexed(store, chunks, size, ipfs)


def _indexed(store: Blockstore, chunks: tuple[Chunk, ...], size: int, ipfs: str) -> dict[str, Any]:
    part: dict[str, Any] = {"size": size, "chunks": [c.__dict__ for c in chunks], "ipfs": ipfs}
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


def _one_line(text: object) -> str:
    """An error's text on one line (the CLI prints it so; onnx's checker writes several)."""
    return " ".join(str(text).split())


def _graph_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph holds: initializers and constant attributes, subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for subgraph in (*subgraphs, *attribute.graphs):
                yield from _graph_tensors(subgraph)


def _parse_onnx(model_bytes: bytes, where: str) -> Any:
    import onnx

    try:
        return onnx.load_from_string(model_bytes)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelImportError(
            _one_line(f"{where}: not a readable ONNX model (truncated or corrupt?): {exc}")
        ) from None


def _declared_bytes(model: Any) -> int:
    """Bytes the graph's tensors declare (initializers, and inputs and outputs of fixed
    shape), from their dims: nothing is allocated, and external data need not be read."""
    from onnx import TensorProto

    total = 0
    for tensor in _graph_tensors(model.graph):
        dtype = TensorProto.DataType.Name(tensor.data_type).lower()
        total += math.prod(max(int(d), 0) for d in tensor.dims) * dtype_bytes(dtype)
    for spec in (*_tensor_specs(model.graph.input), *_tensor_specs(model.graph.output)):
        total += tensor_bytes(spec["dtype"], spec["shape"], {}) or 0
    return total


def _check_declared(model: Any, where: str, budget: int) -> None:
    from onnx import TensorProto

    declared = _declared_bytes(model)
    if declared > budget:
        raise ModelImportError(
            f"{where}: the graph declares {declared:,} bytes of tensors, over the "
            f"{budget:,} bytes of memory a model may take here"
        )
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL or not tensor.HasField("raw_data"):
            continue
        dtype = TensorProto.DataType.Name(tensor.data_type).lower()
        if dtype in ("string", "uint4", "int4", "float4e2m1"):
            continue  # not one fixed width per element
        wanted = math.prod(int(d) for d in tensor.dims) * dtype_bytes(dtype)
        if len(tensor.raw_data) != wanted:
            raise ModelImportError(
                f"{where}: tensor {tensor.name!r} declares {list(tensor.dims)} ({wanted:,} "
                f"bytes) but holds {len(tensor.raw_data):,} (truncated or corrupt?)"
            )


def _onnx_facts(
    graph: Graph, where: str, budget: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    import onnx

    model = _parse_onnx(graph.structure, where)
    _check_declared(model, where, budget)
    try:
        # A graph with external data is checked from its file: the checker reads the
        # tensors' locations beside it.
        onnx.checker.check_model(
            model if graph.directory is None else str(graph.directory / GRAPH_FILE)
        )
    except Exception as exc:  # ValidationError, and C++ errors for what it cannot read
        raise ModelImportError(_one_line(f"{where}: not a valid ONNX model: {exc}")) from None
    body = model.graph
    parameters = sum(math.prod(int(d) for d in t.dims) for t in body.initializer)
    return _tensor_specs(body.input), _tensor_specs(body.output), parameters


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, links followed, is within `root` (itself resolved)."""
    return path.resolve().is_relative_to(root)


def _onnx_file(path: Path, budget: int) -> Any:
    """A `.onnx` file's graph (an `onnx.ModelProto`): tensors kept in external-data files
    beside it are read in, once each location is known to be a file within the model's
    directory (a location is written by whoever made the model: `../../etc/shadow` or a
    link out must not be read into what is then published)."""
    import onnx
    from onnx import TensorProto

    model = _parse_onnx(path.read_bytes(), str(path))
    root = path.parent.resolve()
    external = [t for t in _graph_tensors(model.graph) if t.data_location == TensorProto.EXTERNAL]
    if not external:
        return model
    for tensor in external:
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = path.parent / location
        if not location or Path(location).is_absolute() or not _inside(target, root):
            raise ModelImportError(
                f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside "
                f"the model's directory {root}"
            )
        if not target.is_file():
            raise ModelImportError(
                f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is "
                "not a file"
            )
    _check_declared(model, str(path), budget)  # before any external byte is read
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # short files, bad offsets
        raise ModelImportError(
            _one_line(f"{path}: its external tensor data cannot be read: {exc}")
        ) from None
    return model


@dataclass(frozen=True)
class Graph:
    """An ONNX graph as a manifest stores it: `structure`, the `ModelProto` bytes, and for
    a large graph `directory`, holding it as `GRAPH_FILE` with every sizeable tensor in
    `WEIGHTS_FILE` (protobuf serialises no message over 2 GiB). Without a directory the
    structure holds every tensor."""

    structure: bytes
    directory: Path | None = None

    @property
    def weights(self) -> Path | None:
        return None if self.directory is None else self.directory / WEIGHTS_FILE

    @property
    def size(self) -> int:
        """Bytes of the graph and its weights."""
        weights = self.weights
        return len(self.structure) + (weights.stat().st_size if weights is not None else 0)


def graph_of(model: Any, work: Path) -> Graph:
    """`model` (an `onnx.ModelProto` holding its tensors) laid out as a manifest stores
    it: one blob, or, when its tensors declare more than `EXTERNAL_DATA_BYTES`, a graph
    whose tensors are in one weights file under `work` (the same bytes wherever it is
    made: the tensors in graph order, each at the next offset)."""
    import onnx

    if _declared_bytes(model) <= EXTERNAL_DATA_BYTES:
        return Graph(bytes(model.SerializeToString()))
    directory = work / "graph"
    directory.mkdir(parents=True)
    onnx.save_model(
        model,
        str(directory / GRAPH_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=WEIGHTS_FILE,
        size_threshold=1024,
        convert_attribute=False,
    )
    return Graph((directory / GRAPH_FILE).read_bytes(), directory)


def external_locations(structure: bytes) -> set[str]:
    """Where a graph's tensors say their data is (empty: all inline). A worker loads only
    a graph whose answer is empty or `{WEIGHTS_FILE}`: a location is written by whoever
    registered the model, and the runtime would read any file it names."""
    from onnx import TensorProto

    model = _parse_onnx(structure, "the graph")
    return {
        {e.key: e.value for e in t.external_data}.get("location", "")
        for t in _graph_tensors(model.graph)
        if t.data_location == TensorProto.EXTERNAL
    }


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
) -> Any:
    """`module` exported, as an `onnx.ModelProto` holding every tensor (see `Graph`)."""
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
        # Whatever the exporter wrote beside the graph is read in; `graph_of` lays it out.
        return onnx.load(str(path), load_external_data=True)


def export_causal_lm(
    directory: Path, progress: Callable[[str], None]
) -> tuple[Any, Any, KvCache | None]:
    """Load a Hugging Face causal LM from `directory` (offline) and export it to ONNX bytes.

    The graph carries the key/value cache where the model's cache allows it: one graph
    then serves a whole sequence (an empty past) and each generated token after it (the
    past so far), so generating n tokens costs n single-token passes instead of n passes
    over ever longer sequences. It takes an attention mask, so that prompts of different
    lengths share a batch (each padded on the left). Models whose cache does not fit that
    shape get the plain graph (logits only) and generate without a cache.
    """
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

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        cache = _kv_cache_of(model)
        progress("exporting to ONNX with a key/value cache (torch.onnx.export, dynamo)")
        return _export_cached(model, cache), model.config, cache
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


def _export_cached(model: Any, cache: KvCache) -> Any:
    """A causal LM's graph with its key/value cache and an attention mask (see
    `export_causal_lm`)."""
    import torch
    from transformers import DynamicCache

    class CachedStep(torch.nn.Module):
        def __init__(self, inner: Any, layers: int) -> None:
            super().__init__()
            self.inner, self.layers = inner, layers

        def forward(
            self, input_ids: Any, attention_mask: Any, past_keys: Any, past_values: Any
        ) -> Any:
            cache = DynamicCache(config=self.inner.config)
            for i in range(self.layers):
                cache.update(past_keys[i], past_values[i], i)
            # Positions count the tokens the mask lets in, so that a row padded on the left
            # (a batch of prompts of different lengths) reads as it would alone.
            counted = attention_mask.cumsum(-1) - 1
            positions = counted.clamp(min=0)[:, -input_ids.shape[1] :]
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=cache,
                position_ids=positions,
                use_cache=True,
            )
            present = out.past_key_values.layers
            keys = torch.stack([present[i].keys for i in range(self.layers)])
            values = torch.stack([present[i].values for i in range(self.layers)])
            return out.logits, keys, values

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shape = (cache.layers, 1, cache.heads, 5, cache.head_dim)
    positions = torch.export.Dim("past")
    return _export(
        CachedStep(model, cache.layers),
        # Two tensors, not one twice: the exporter folds aliased inputs into one.
        (
            torch.zeros((1, 3), dtype=torch.int64),
            torch.ones((1, 8), dtype=torch.int64),
            torch.zeros(shape),
            torch.zeros(shape),
        ),
        (
            ["input_ids", ATTENTION_MASK, PAST_KEYS, PAST_VALUES],
            ["logits", "present_keys", "present_values"],
        ),
        {
            "input_ids": {0: batch, 1: sequence},
            # The past's positions and the new ones: the exporter finds the sum.
            ATTENTION_MASK: {0: batch, 1: torch.export.Dim.AUTO},
            PAST_KEYS: {1: batch, 3: positions},
            PAST_VALUES: {1: batch, 3: positions},
        },
    )


@dataclass(frozen=True)
class SentenceModules:
    """What a sentence-transformers directory adds to its encoder (`modules.json`): how
    token vectors pool into one, whether it is normalised, the longest input it reads."""

    pooling: str  # "mean" or "cls"
    normalize: bool
    max_tokens: int


def sentence_modules(path: Path) -> SentenceModules | None:
    """The sentence-transformers modules of a directory (None: it has no `modules.json`)."""
    listed = path / "modules.json"
    if not listed.is_file():
        return None
    try:
        modules = json.loads(listed.read_bytes())
        kinds = {str(m["type"]).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
        pooling_dir = path / kinds["Pooling"]
        if not _inside(pooling_dir, path.resolve()):
            raise ModelImportError(f"{listed}: the pooling module is outside the directory")
        pooling = json.loads((pooling_dir / "config.json").read_bytes())
        settings = path / "sentence_bert_config.json"
        max_tokens = (
            json.loads(settings.read_bytes()).get("max_seq_length") if settings.is_file() else None
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelImportError(
            _one_line(f"{path}: not a readable sentence-transformers directory: {exc!r}")
        ) from None
    if pooling.get("pooling_mode_mean_tokens"):
        mode = "mean"
    elif pooling.get("pooling_mode_cls_token"):
        mode = "cls"
    else:
        raise ModelImportError(
            f"{pooling_dir}/config.json: only mean and CLS pooling are supported"
        )
    unknown = set(kinds) - {"Transformer", "Pooling", "Normalize"}
    if unknown:
        raise ModelImportError(f"{listed}: modules {sorted(unknown)} are not supported")
    limit = int(_config(path).get("max_position_embeddings") or 512)
    return SentenceModules(mode, "Normalize" in kinds, min(int(max_tokens or limit), limit))


def export_sentence_embedder(
    directory: Path, modules: SentenceModules, progress: Callable[[str], None]
) -> tuple[Any, Any]:
    """A sentence-transformers encoder with its pooling and normalising in one ONNX graph:
    `input_ids` and `attention_mask` [batch, sequence] in, `embeddings` [batch, dimensions]
    out (the worker runs the graph and nothing else)."""
    import torch
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelImportError(f"{directory}: not a loadable encoder: {exc}") from None
    model.eval()

    class Embedder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]
            if modules.pooling == "mean":
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            else:
                pooled = hidden[:, 0]
            if modules.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return pooled

    progress("exporting the encoder with its pooling to ONNX (torch.onnx.export, dynamo)")
    return _export_encoder(Embedder(model), "embeddings"), model.config


def export_text_classifier(directory: Path, progress: Callable[[str], None]) -> tuple[Any, Any]:
    """An encoder with its sequence-classification head: `input_ids` and `attention_mask`
    [batch, sequence] in, `logits` [batch, labels] out (scores are the worker's softmax,
    or sigmoid for multi-label models, of these)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelImportError(f"{directory}: not a loadable text classifier: {exc}") from None
    model.eval()

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    progress("exporting the classifier to ONNX (torch.onnx.export, dynamo)")
    return _export_encoder(Logits(model), "logits"), model.config


def export_seq2seq(directory: Path, progress: Callable[[str], None]) -> tuple[Any, Any]:
    """An encoder-decoder LM (T5-style): `input_ids` [batch, sequence] (the prompts, padded
    on the right), `attention_mask` [batch, sequence] (0: padding) and `decoder_input_ids`
    [batch, decoded] (the start token, then what was generated) in, `logits` [batch,
    decoded, vocabulary] out. No cache: each step runs the encoder and the decoder again,
    which one teacher-forced pass also gives the verifier."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    try:
        # Eager attention: the exporter cannot decompose T5's fused attention's reshapes.
        model = AutoModelForSeq2SeqLM.from_pretrained(
            directory, local_files_only=True, attn_implementation="eager"
        )
    except (OSError, ValueError) as exc:
        raise ModelImportError(
            f"{directory}: not a loadable sequence-to-sequence model: {exc}"
        ) from None
    model.eval()

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, decoder_input_ids: Any) -> Any:
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids,
                use_cache=False,
            ).logits

    progress("exporting the encoder-decoder to ONNX (torch.onnx.export, dynamo)")
    batch = torch.export.Dim("batch")
    sequence, decoded = torch.export.Dim("sequence"), torch.export.Dim("decoded")
    ones = partial(torch.ones, dtype=torch.int64)
    graph = _export(
        Logits(model),
        (ones((2, 8)), ones((2, 8)), ones((2, 4))),
        (["input_ids", ATTENTION_MASK, "decoder_input_ids"], ["logits"]),
        {
            "input_ids": {0: batch, 1: sequence},
            ATTENTION_MASK: {0: batch, 1: sequence},
            "decoder_input_ids": {0: batch, 1: decoded},
        },
    )
    return graph, model.config


def _export_encoder(module: Any, output: str) -> Any:
    """An encoder graph over a padded batch of texts (`input_ids`, `attention_mask`)."""
    import torch

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    example = (torch.ones((2, 8), dtype=torch.int64), torch.ones((2, 8), dtype=torch.int64))
    return _export(
        module,
        example,
        (["input_ids", "attention_mask"], [output]),
        {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
    )


def export_image_classifier(directory: Path, progress: Callable[[str], None]) -> tuple[Any, Any]:
    """A vision encoder with its image-classification head: `pixel_values` [batch, 3,
    height, width] (as the directory's image processor makes them) in, `logits` [batch,
    labels] out."""
    import torch
    from transformers import AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelImportError(f"{directory}: not a loadable image classifier: {exc}") from None
    model.eval()

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: Any) -> Any:
            return self.inner(pixel_values=pixel_values).logits

    progress("exporting the image classifier to ONNX (torch.onnx.export, dynamo)")
    size = int(model.config.image_size)
    batch = torch.export.Dim("batch")
    graph = _export(
        Logits(model),
        (torch.zeros((2, int(model.config.num_channels), size, size)),),
        (["pixel_values"], ["logits"]),
        {"pixel_values": {0: batch}},
    )
    return graph, model.config


def export_image_text(directory: Path, progress: Callable[[str], None]) -> tuple[Any, Any]:
    """A CLIP-style model's image-text scores: `pixel_values` [images, 3, height, width],
    `input_ids` and `attention_mask` [texts, sequence] in, `logits` [images, texts] out
    (the scaled cosine similarities; the worker's softmax over the texts scores them)."""
    import torch
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelImportError(f"{directory}: not a loadable image-text model: {exc}") from None
    model.eval()

    class Scores(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: Any, input_ids: Any, attention_mask: Any) -> Any:
            out = self.inner(
                pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask
            )
            return out.logits_per_image

    progress("exporting the image-text model to ONNX (torch.onnx.export, dynamo)")
    vision = model.config.vision_config
    size = int(vision.image_size)
    images, texts = torch.export.Dim("images"), torch.export.Dim("texts")
    sequence = torch.export.Dim("sequence")
    graph = _export(
        Scores(model),
        (
            torch.zeros((2, int(vision.num_channels), size, size)),
            torch.ones((3, 8), dtype=torch.int64),
            torch.ones((3, 8), dtype=torch.int64),
        ),
        (["pixel_values", "input_ids", "attention_mask"], ["logits"]),
        {
            "pixel_values": {0: images},
            "input_ids": {0: texts, 1: sequence},
            "attention_mask": {0: texts, 1: sequence},
        },
    )
    return graph, model.config


def _task_of_directory(path: Path, modules: SentenceModules | None) -> str:
    """What a directory's files say it is: sentence-transformers modules, a classification
    head, CLIP's pair of towers, an encoder-decoder, or else a causal LM."""
    heads = _architectures(path)
    if modules is not None:
        return EMBEDDING
    if any(a.endswith("ForSequenceClassification") for a in heads):
        return CLASSIFICATION
    if any(a.endswith("ForImageClassification") for a in heads):
        return IMAGE_CLASSIFICATION
    if any(a in ("CLIPModel", "SiglipModel") for a in heads):
        return IMAGE_TEXT
    if _config(path).get("is_encoder_decoder") is True:
        return SEQ2SEQ
    return TEXT_GENERATION


def pillow_image_processor(directory: Path) -> Any:
    """The Pillow form of a directory's image processor class (transformers' default form
    needs torchvision); ModelImportError when it has none."""
    import transformers

    try:
        config = json.loads((directory / "preprocessor_config.json").read_bytes())
        named = str(config.get("image_processor_type", "")).removesuffix("Fast")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelImportError(
            _one_line(f"{directory}: no readable image processor: {exc}")
        ) from None
    kind = getattr(transformers, named.removesuffix("Pil") + "Pil", None)
    if kind is None:
        raise ModelImportError(f"{directory}: no Pillow image processor for {named!r}")
    return kind


def _reads_text(path: Path) -> bool:
    """Whether a vision directory's model reads text too (CLIP-style: a text config)."""
    return (path / "config.json").is_file() and "text_config" in _config(path)


def _architectures(path: Path) -> list[str]:
    return [str(a) for a in _config(path).get("architectures") or []]


def _patches(vision: Any) -> int:
    """The tokens a vision transformer reads an image as: its patches and the class token."""
    return (int(vision.image_size) // int(vision.patch_size or 1)) ** 2 + 1


def _labelled(task: str, config: Any, positions: int) -> dict[str, Any]:
    """A classifier's manifest fields: its labels in index order and how they score."""
    labels = config.id2label or {}
    return {
        "task": task,
        "model_type": str(config.model_type),
        "max_positions": positions,
        "hidden_size": int(config.hidden_size),
        "labels": [str(labels.get(i, i)) for i in range(int(config.num_labels))],
        "problem_type": config.problem_type or "single_label_classification",
    }


#: Bytes per element of the safetensors dtypes (the header names them so).
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2}
#: Copies of the weights an import holds at its peak: the torch model (fp32), the exported
#: graph as read back, and its serialised bytes.
_IMPORT_COPIES = 3


def _config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelImportError(_one_line(f"{path}/config.json: not readable JSON: {exc}")) from None
    if not isinstance(config, dict):
        raise ModelImportError(f"{path}/config.json: not a JSON object")
    return config


def _check_hf_paths(path: Path) -> None:
    """Every file the import reads or stores must be in the directory (a link out of it
    would publish whatever it points at). A Hugging Face cache snapshot links its files to
    `../../blobs/`; that layout is allowed."""
    root = path.resolve()
    roots = [root]
    if root.parent.name == "snapshots":
        roots.append((root.parent.parent / "blobs").resolve())
    for entry in sorted(path.iterdir()):
        if not any(_inside(entry, r) for r in roots):
            raise ModelImportError(
                f"{entry}: links to {entry.resolve()}, outside the model directory {root}"
            )
    for index in sorted(path.glob("*.index.json")):
        try:
            shards = set(json.loads(index.read_bytes()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelImportError(_one_line(f"{index}: not a readable index: {exc}")) from None
        for shard in sorted(str(s) for s in shards):
            if Path(shard).is_absolute() or not _inside(path / shard, root):
                raise ModelImportError(
                    f"{index}: names the weights file {shard!r}, outside the model directory"
                )


def _safetensors_bytes(file: Path) -> int:
    """The bytes a `.safetensors` file's header declares (its data is not read)."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or length > min(size - 8, 100 << 20):
            raise ModelImportError(f"{file}: not a readable safetensors file (truncated?)")
        try:
            header = json.loads(handle.read(length))
        except ValueError as exc:
            raise ModelImportError(_one_line(f"{file}: not a readable header: {exc}")) from None
    total = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        declared = math.prod(int(d) for d in tensor["shape"])
        declared *= _SAFETENSORS_BYTES.get(tensor["dtype"], 1)
        end = int(tensor["data_offsets"][1])
        if end > size - 8 - length:
            raise ModelImportError(
                f"{file}: tensor {name!r} ends at byte {end:,} of {size - 8 - length:,} "
                "(truncated?)"
            )
        total += declared
    return total


def _config_parameters(config: dict[str, Any]) -> int:
    """A decoder's parameter count as its config's dimensions imply (12·layers·width² for
    the blocks, plus the embeddings): transformers allocates that many however small the
    weights files are, so it is bounded before anything is loaded."""

    def first(*keys: str) -> int:
        for key in keys:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return max(value, 0)
        return 0

    width = first("hidden_size", "n_embd", "d_model")
    layers = first("num_hidden_layers", "n_layer", "num_layers") + first("num_decoder_layers")
    inner = first("intermediate_size", "n_inner", "d_ff") or 4 * width
    return layers * (4 * width * width + 2 * width * inner) + first("vocab_size") * width


def _check_hf_declared(path: Path, budget: int) -> None:
    weights = sum(_safetensors_bytes(f) for f in sorted(path.glob("*.safetensors")))
    weights = max(weights, 4 * _config_parameters(_config(path)))
    if _IMPORT_COPIES * weights > budget:
        raise ModelImportError(
            f"{path}: its config and weights declare {weights:,} bytes of parameters; "
            f"importing needs about {_IMPORT_COPIES * weights:,}, over the {budget:,} bytes "
            "of memory a model may take here"
        )


def _check_directory(path: Path, task: str | None, budget: int) -> None:
    """Refuse a directory missing what its task needs, holding a path outside it, or
    declaring more weights than `budget`, before transformers reads anything."""
    vision = task in (IMAGE_CLASSIFICATION, IMAGE_TEXT) or (
        task is None and (path / "preprocessor_config.json").is_file()
    )
    needs = {"config.json": "its config"}
    if vision:
        needs["preprocessor_config.json"] = "its image processor"
    if not vision or _reads_text(path):
        needs["tokenizer.json"] = "its tokenizer"
    missing = [f"{what} ({f})" for f, what in needs.items() if not (path / f).is_file()]
    if missing:
        raise ModelImportError(
            f"{path}: a Hugging Face model directory needs {' and '.join(missing)}"
        )
    _check_hf_paths(path)
    _check_hf_declared(path, budget)
    if task is not None and task not in DIRECTORY_TASKS:
        raise ModelImportError(f"--task {task}: a directory is one of {DIRECTORY_TASKS}")


def _export_directory(
    path: Path, task: str | None, progress: Callable[[str], None]
) -> tuple[Any, dict[str, Any]]:
    """The directory's ONNX graph (an `onnx.ModelProto`) and the manifest fields its task
    adds."""
    modules = sentence_modules(path) if task in (None, EMBEDDING) else None
    if task == EMBEDDING and modules is None:
        limit = int(_config(path).get("max_position_embeddings") or 512)
        modules = SentenceModules("mean", True, limit)
    if task is None:
        task = _task_of_directory(path, modules)
    if task == CLASSIFICATION:
        graph, config = export_text_classifier(path, progress)
        positions = int(config.max_position_embeddings or 512)
        return graph, _labelled(CLASSIFICATION, config, positions)
    if task == IMAGE_CLASSIFICATION:
        pillow_image_processor(path)
        graph, config = export_image_classifier(path, progress)
        labelled = _labelled(IMAGE_CLASSIFICATION, config, 0)
        labelled.update(image_size=int(config.image_size), patches=_patches(config))
        return graph, labelled
    if task == IMAGE_TEXT:
        pillow_image_processor(path)
        graph, config = export_image_text(path, progress)
        vision, text = config.vision_config, config.text_config
        return graph, {
            "task": IMAGE_TEXT,
            "model_type": str(config.model_type),
            "max_positions": int(text.max_position_embeddings),
            "hidden_size": max(int(vision.hidden_size), int(text.hidden_size)),
            "image_size": int(vision.image_size),
            "patches": _patches(vision),
        }
    if task == SEQ2SEQ:
        graph, config = export_seq2seq(path, progress)
        return graph, {
            "task": SEQ2SEQ,
            "model_type": str(config.model_type),
            # Relative positions (T5) set no hard limit; 512 is what such models train at.
            "max_positions": int(getattr(config, "n_positions", 0) or 512),
            "eos_token_id": config.eos_token_id,
            "decoder_start_token_id": int(config.decoder_start_token_id or 0),
        }
    if task == EMBEDDING:
        assert modules is not None
        graph, config = export_sentence_embedder(path, modules, progress)
        return graph, {
            "task": EMBEDDING,
            "model_type": str(config.model_type),
            "max_positions": modules.max_tokens,
            "dimensions": int(config.hidden_size),
            "pooling": modules.pooling,
            "normalized": modules.normalize,
        }
    graph, config, cache = export_causal_lm(path, progress)
    document: dict[str, Any] = {
        "task": TEXT_GENERATION,
        "model_type": str(config.model_type),
        "max_positions": int(getattr(config, "n_positions", 0) or config.max_position_embeddings),
        "eos_token_id": config.eos_token_id,
    }
    if cache is not None:
        document["kv_cache"] = dataclasses.asdict(cache)
    return graph, document


def import_model(
    path: Path,
    name: str,
    store: Blockstore,
    progress: Callable[[str], None] = lambda _: None,
    memory_budget: int = 0,
    task: str | None = None,
) -> Manifest:
    """Import `path` into `store`; the returned manifest is stored as a block too.

    Hostile files get a `ModelImportError` naming the problem before anything large is
    read or allocated: a truncated or corrupt graph or weights file, dimensions declaring
    more than `memory_budget` bytes (0: three quarters of this machine's memory;
    `processors.compute.budget.default_budget`), a directory without its tokenizer, and a
    file, link or external-data location outside the model's directory. `task` overrides
    what the directory says (an encoder without `modules.json` then pools by mean and
    normalises, as most sentence encoders do)."""
    path = Path(path)
    budget = default_budget(memory_budget)
    with tempfile.TemporaryDirectory(prefix="lattice-import-") as tmp:
        work = Path(tmp)
        if path.is_dir():
            _check_directory(path, task, budget)
            progress(f"loading {path} with transformers (offline)")
            model, document = _export_directory(path, task, progress)
            graph = graph_of(model, work)
            del model  # a large graph's tensors are in its weights file now
            inputs, outputs, parameters = _onnx_facts(graph, str(path), budget)
            progress("storing tokenizer and source weights")
            files = {p.name: p for p in sorted(path.iterdir()) if p.is_file()}
            tokenizer = {n: f for n, f in files.items() if n in _TOKENIZER_FILES}
            source = {n: f for n, f in files.items() if n not in _TOKENIZER_FILES}
            for part, members in (("tokenizer", tokenizer), ("source", source)):
                with (work / f"{part}.tar").open("wb") as out:
                    deterministic_tar(members, out)
                document[part] = store_path(store, work / f"{part}.tar", progress)
        elif path.suffix == ".onnx" and path.is_file():
            graph = graph_of(_onnx_file(path, budget), work)
            inputs, outputs, parameters = _onnx_facts(graph, str(path), budget)
            document = {"task": TENSOR, "model_type": "onnx"}
        else:
            raise ModelImportError(
                f"{path}: expected a Hugging Face model directory or a .onnx file"
            )
        progress(f"chunking {graph.size:,} bytes of ONNX into content-addressed blocks")
        document.update(
            name=name,
            format="onnx",
            onnx=store_part(store, graph.structure),
            inputs=inputs,
            outputs=outputs,
            parameter_count=parameters,
            vram_required_bytes=weights_bytes(graph.size),
        )
        if graph.weights is not None:
            document["weights"] = store_path(store, graph.weights, progress)
    cid = store.put(canonical_json(document))
    return Manifest(document, cid)


def weights_bytes(onnx_size: int) -> int:
    """What a loaded graph of `onnx_size` bytes holds before it runs: its fp32 weights held
    once by the runtime beside the graph they came in, plus the runtime's overhead."""
    return 2 * onnx_size + RUNTIME_OVERHEAD_BYTES


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
        # A large graph's weights are a file of their own (`Graph`): the model is both.
        total_bytes=d["onnx"]["size"] + d.get("weights", {}).get("size", 0),
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
