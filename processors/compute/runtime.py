"""Running models: fetch by CID, load into ONNX Runtime, generate text or evaluate tensors.

Workers and the verifier's re-execution share this code, so a spot check runs exactly what
a worker runs. Every block comes from a local blockstore or, when missing there, from a
peer's `/v1/blocks/{cid}` (the gateway's), and is hashed before use: a model is only ever
loaded from bytes that match the manifest the ledger registered.

Text generation is greedy (argmax) decoding over the full sequence at each step: the graph
the importer exports has no KV cache, which keeps the graph portable and is cheap for the
small models the tests use; the cost grows quadratically with the output length.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from processors.compute.models import (
    PAST_KEYS,
    PAST_VALUES,
    TEXT_GENERATION,
    KvCache,
    Manifest,
    load_manifest,
    store_part,
    untar,
)
from processors.market.content import Blockstore, ContentError, verify


class FetchError(RuntimeError):
    """A block no source could provide."""


class BlockSource:
    """The local blockstore, backed by HTTP peers for what it does not hold."""

    def __init__(
        self,
        store: Blockstore,
        peers: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        """`headers` go with every fetch (a gateway marks its own as a peer's)."""
        self.store = store
        self.peers = tuple(p.rstrip("/") for p in peers)
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s

    def get(self, cid: str) -> bytes:
        try:
            return self.store.get(cid)
        except KeyError:
            pass
        errors = []
        for peer in self.peers:
            request = urllib.request.Request(f"{peer}/ipfs/{cid}", headers=self.headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    data = verify(cid, response.read())
            except (OSError, ContentError) as exc:
                errors.append(f"{peer}: {exc}")
                continue
            self.store.put_verified(cid, data)
            return data
        raise FetchError(f"block {cid} not found ({'; '.join(errors) or 'no peers'})")

    def part(self, manifest: Manifest, name: str) -> bytes:
        return b"".join(self.get(c.cid) for c in manifest.chunks(name))

    def file(self, index_cid: str) -> bytes:
        """A file stored as chunks under an index block (`processors.compute.models.store_part`)."""
        index = json.loads(self.get(index_cid))
        data = b"".join(self.get(c["cid"]) for c in index["chunks"])
        if len(data) != index["size"]:
            raise FetchError(f"file {index_cid}: {len(data)} bytes, index says {index['size']}")
        return data

    def publish(self, data: bytes) -> str:
        """Store a file as chunks plus index locally and on every peer; the index CID."""
        part = store_part(self.store, data)
        blocks = [c["cid"] for c in part["chunks"]] + [part["cid"]]
        for peer in self.peers:
            for cid in blocks:
                request = urllib.request.Request(
                    f"{peer}/v1/content", self.store.get(cid), {"X-CID": cid}
                )
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
        return str(part["cid"])

    def manifest(self, cid: str) -> Manifest:
        return load_manifest(self.get(cid), cid)


def providers(use_gpu: bool) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if use_gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass(frozen=True)
class Generation:
    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    chosen_logits: tuple[float, ...]  # the logit of each generated token when chosen
    text: str
    finish_reason: str  # "stop" (end of sequence) or "length"

    def output(self) -> bytes:
        return json.dumps(
            {
                "prompt_tokens": len(self.prompt_ids),
                "token_ids": list(self.token_ids),
                "text": self.text,
                "finish_reason": self.finish_reason,
            },
            sort_keys=True,
        ).encode()


@dataclass
class LoadedModel:
    manifest: Manifest
    session: Any
    provider: str
    threads: int
    tokenizer: Any = None
    eos_token_id: int | None = None
    kv_cache: KvCache | None = None  # None: a graph without one (generation re-reads all)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- text generation ------------------------------------------------------------------

    def prompt_ids(self, request: dict[str, Any]) -> list[int]:
        if "messages" in request:
            rendered = self.tokenizer.apply_chat_template(
                request["messages"], tokenize=False, add_generation_prompt=True
            )
            ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(str(request.get("prompt", "")), add_special_tokens=False)[
                "input_ids"
            ]
        return list(ids) or [self.eos_token_id or 0]

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits for every position of one sequence: [len(ids), vocabulary]."""
        return self.step(ids, None)[0]

    def step(self, ids: Sequence[int], past: Any) -> tuple[np.ndarray, Any]:
        """Logits for `ids` following `past` (a cache this returned before, or None for
        the start of the sequence), and the cache including `ids` (None without one)."""
        feed: dict[str, Any] = {"input_ids": np.asarray([list(ids)], dtype=np.int64)}
        if self.kv_cache is None:
            with self.lock:
                (out,) = self.session.run(["logits"], feed)
            return np.asarray(out[0], dtype=np.float32), None
        keys, values = past if past is not None else (self.kv_cache.empty(),) * 2
        feed.update({PAST_KEYS: keys, PAST_VALUES: values})
        with self.lock:
            out, keys, values = self.session.run(["logits", "present_keys", "present_values"], feed)
        return np.asarray(out[0], dtype=np.float32), (keys, values)

    def generate(
        self, request: dict[str, Any], on_text: Callable[[int, int, str], None] | None = None
    ) -> Generation:
        """Greedy decoding; `on_text(index, token, text)` hears each token as it comes, with
        the text it adds ("" while the text so far ends inside a multi-byte character: that
        text comes with a later token)."""
        limit = int(self.manifest.document.get("max_positions") or 1024)
        prompt = self.prompt_ids(request)[-(limit - 1) :]
        max_tokens = max(1, min(int(request.get("max_tokens", 16)), limit - len(prompt)))
        ids, chosen, logits = list(prompt), [], []
        sent = ""
        finish = "length"
        rows, past = self.step(ids, None)
        for _ in range(max_tokens):
            row = rows[-1]
            token = int(np.argmax(row))
            if token == self.eos_token_id:
                finish = "stop"
                break
            ids.append(token)
            chosen.append(token)
            logits.append(float(row[token]))
            if on_text is not None:
                so_far = self.tokenizer.decode(chosen, skip_special_tokens=True)
                added = ""
                if not so_far.endswith("\ufffd"):
                    added, sent = so_far[len(sent) :], so_far
                on_text(len(chosen) - 1, token, added)
            if len(chosen) < max_tokens:
                # With a cache only the new token is run; without, the whole sequence again.
                rows, past = self.step([token], past) if past is not None else self.step(ids, None)
        text = self.tokenizer.decode(chosen, skip_special_tokens=True)
        return Generation(tuple(prompt), tuple(chosen), tuple(logits), text, finish)

    # -- tensors --------------------------------------------------------------------------

    def run_tensors(self, inputs: bytes) -> bytes:
        """Evaluate an `.npz` of named inputs; the outputs come back as an `.npz`."""
        with np.load(io.BytesIO(inputs), allow_pickle=False) as arrays:
            feed = {name: arrays[name] for name in arrays.files}
        with self.lock:
            names = [o.name for o in self.session.get_outputs()]
            values = self.session.run(names, feed)
        buffer = io.BytesIO()
        np.savez(buffer, **dict(zip(names, values, strict=True)))
        return buffer.getvalue()


class ModelCache:
    """Loaded models by manifest CID (one session per model and process)."""

    def __init__(self, source: BlockSource, work_dir: Path, threads: int, use_gpu: bool) -> None:
        self.source = source
        self.work_dir = Path(work_dir)
        self.threads = threads
        self.use_gpu = use_gpu
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def load(self, manifest_cid: str) -> tuple[LoadedModel, int]:
        """The model and how many milliseconds loading it took (0 when cached)."""
        with self._lock:
            model = self._models.get(manifest_cid)
            if model is not None:
                return model, 0
            started = time.perf_counter()
            model = self._load(manifest_cid)
            self._models[manifest_cid] = model
            return model, int((time.perf_counter() - started) * 1000)

    def unpacked(self, manifest_cid: str, part: str) -> tuple[Manifest, Path]:
        """A tar part of a model (its "source" weights or "tokenizer") as a directory."""
        manifest = self.source.manifest(manifest_cid)
        directory = self.work_dir / part / manifest_cid
        if not directory.exists():
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=directory.parent))
            untar(self.source.part(manifest, part), tmp)
            os.replace(tmp, directory)
        return manifest, directory

    def tokenizer(self, manifest_cid: str) -> Any:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(self.unpacked(manifest_cid, "tokenizer")[1])

    def _load(self, manifest_cid: str) -> LoadedModel:
        import onnxruntime as ort

        manifest = self.source.manifest(manifest_cid)
        graph = self.source.part(manifest, "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        chosen = providers(self.use_gpu)
        session = ort.InferenceSession(graph, sess_options=options, providers=chosen)
        model = LoadedModel(manifest, session, session.get_providers()[0], self.threads)
        if manifest.task == TEXT_GENERATION:
            model.tokenizer = self.tokenizer(manifest_cid)
            model.eos_token_id = manifest.document.get("eos_token_id")
            cache = manifest.document.get("kv_cache")
            model.kv_cache = KvCache(**cache) if cache else None
        return model
