"""Running models: fetch by CID, load into ONNX Runtime, generate text or evaluate tensors.

Workers and the verifier's re-execution share this code, so a spot check runs exactly what
a worker runs. Every block comes from a local blockstore or, when missing there, from a
peer's `/v1/blocks/{cid}` (the gateway's), and is hashed before use: a model is only ever
loaded from bytes that match the manifest the ledger registered.

Text generation chooses each token as the request's sampling asks (greedy, or seeded
sampling the verifier can re-derive: `processors.compute.generation`), with the graph's
key/value cache where the importer exported one and otherwise over the whole sequence at
each step (portable, cheap for small models, quadratic in the output length).

Memory: a model or job must not take the process down with it. Each `ModelCache` has a
budget (bytes); a model whose weights are over it is not loaded, and every job is estimated
from declared sizes first (`processors.compute.budget`: the weights, the prompt's logits and
the key/value cache at `max_tokens`, or the `.npz` input's headers and the outputs their
shapes bind) and refused with `OverBudgetError` before it runs. What no declaration bounds
(a graph that computes a shape from its input) meets a cap where it allocates: ONNX
Runtime's CPU arena is the process's one shared arena, capped (`cpu_arena`), and a CUDA
session gets `gpu_mem_limit`; an allocation past either fails that run, also as
`OverBudgetError`, and the session stays usable.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from processors.compute.budget import (
    JobInputError,
    OverBudgetError,
    default_budget,
    embedding_bytes,
    generation_bytes,
    tensor_job_bytes,
)
from processors.compute.generation import (
    Choice,
    Generation,
    Sampling,
    StreamedToken,
    choose,
    cut_at_stop,
    held_back,
    log_softmax,
    top_logprobs,
)
from processors.compute.models import (
    ATTENTION_MASK,
    CLASSIFICATION,
    EMBEDDING,
    GENERATIVE,
    GRAPH_FILE,
    IMAGE_CLASSIFICATION,
    IMAGE_TEXT,
    PAST_KEYS,
    PAST_VALUES,
    SEQ2SEQ,
    WEIGHTS_FILE,
    KvCache,
    Manifest,
    ModelImportError,
    external_locations,
    load_manifest,
    pillow_image_processor,
    store_part,
    untar,
)
from processors.market.client import http_post
from processors.market.content import Blockstore, ContentError, verify
from processors.market.ipfs import IpfsError, local_peer

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A block no source could provide, or a model no worker may load as it is."""


class EncoderInputError(JobInputError):
    """An embedding or classification job's input is not texts; the message names the
    parameter."""


#: The most texts one embedding or classification job reads (OpenAI embeds up to 2,048;
#: a batch here is one pass).
MAX_ENCODER_INPUTS = 256
#: The tasks whose jobs share one pass (`LoadedModel.encode_together`).
ENCODERS = (EMBEDDING, CLASSIFICATION, IMAGE_CLASSIFICATION, IMAGE_TEXT)


#: The most pixels a job's image may have once decoded (a small file can declare a huge
#: image: Pillow refuses beyond this before allocating it).
MAX_IMAGE_PIXELS = 4096 * 4096


def decode_image(data: str, index: int) -> Any:
    """A job's image (base64 PNG, JPEG, ... bytes) as RGB pixels; EncoderInputError naming
    the image for anything that is not one, or is larger than `MAX_IMAGE_PIXELS`."""
    import base64
    import binascii
    import warnings

    from PIL import Image

    try:
        raw = base64.b64decode(data, validate=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            picture = Image.open(io.BytesIO(raw))
            picture.load()
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError, Warning) as exc:
        raise EncoderInputError(f"images[{index}]: not a readable image ({exc})") from None
    return picture.convert("RGB")


def label_scores(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """A classifier's scores from its logits: softmax over the labels, or each label's
    sigmoid when a text may have several (as transformers' pipeline scores them)."""
    values = np.asarray(logits, dtype=np.float64)
    if multi_label:
        return np.asarray(1 / (1 + np.exp(-values)))
    shifted = np.exp(values - values.max())
    return np.asarray(shifted / shifted.sum())


IPFS_BACKOFF_S = 30.0


class BlockSource:
    """The local blockstore, backed by the node's IPFS peer (bitswap from the other nodes'
    peers) and then by HTTP peers (gateways) for what it does not hold."""

    def __init__(
        self,
        store: Blockstore,
        peers: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        ipfs_home: Path | None = None,
    ) -> None:
        """`headers` go with every fetch (a gateway marks its own as a peer's); `ipfs_home`
        is where the node's IPFS peer says where it is (`<data-dir>/ipfs`)."""
        self.store = store
        self.peers = tuple(p.rstrip("/") for p in peers)
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.ipfs_home = ipfs_home
        #: After a block the IPFS peer could not find, the HTTP peers are asked first for a
        #: while (the peer may not have found its own peers yet), not after its timeout.
        self._ipfs_after = 0.0

    def get(self, cid: str) -> bytes:
        try:
            return self.store.get(cid)
        except KeyError:
            pass
        errors: list[str] = []
        sources: list[Callable[[str], bytes | None]] = [
            partial(self._from_peer, url) for url in self.peers
        ]
        if self.ipfs_home is not None:
            # The IPFS peer first, unless it just failed to find a block: then last.
            first = time.monotonic() >= self._ipfs_after
            sources.insert(0 if first else len(sources), self._from_ipfs)
        for source in sources:
            try:
                data = source(cid)
            except (FetchError, IpfsError) as exc:
                errors.append(str(exc))
                continue
            if data is not None:
                self.store.put_verified(cid, data)
                return data
        raise FetchError(f"block {cid} not found ({'; '.join(errors) or 'no peers'})")

    def _from_ipfs(self, cid: str) -> bytes | None:
        assert self.ipfs_home is not None
        peer = local_peer(self.ipfs_home)
        if peer is None:
            return None
        try:
            return peer.get(cid)
        except (IpfsError, ContentError) as exc:
            self._ipfs_after = time.monotonic() + IPFS_BACKOFF_S
            raise IpfsError(f"IPFS: {exc}") from None

    def _from_peer(self, url: str, cid: str) -> bytes:
        request = urllib.request.Request(f"{url}/ipfs/{cid}", headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return verify(cid, response.read())
        except (OSError, ContentError) as exc:
            raise FetchError(f"{url}: {exc}") from None

    def part(self, manifest: Manifest, name: str) -> bytes:
        return b"".join(self.get(c.cid) for c in manifest.chunks(name))

    def file(self, index_cid: str) -> bytes:
        """A file stored as chunks under an index block (`processors.compute.models.store_part`)."""
        index = json.loads(self.get(index_cid))
        data = b"".join(self.get(c["cid"]) for c in index["chunks"])
        if len(data) != index["size"]:
            raise FetchError(f"file {index_cid}: {len(data)} bytes, index says {index['size']}")
        return data

    def write_file(self, index_cid: str, target: Path) -> None:
        """`file`, written to `target` a block at a time (a model's weights may be larger
        than memory allows twice), logging how far it is."""
        index = json.loads(self.get(index_cid))
        size, done, said = int(index["size"]), 0, 0
        with target.open("wb") as out:
            for c in index["chunks"]:
                done += out.write(self.get(c["cid"]))
                if done - said >= max(size // 10, 256 << 20):
                    said = done
                    log.info("fetched %d of %d MiB of %s", done >> 20, size >> 20, index_cid)
        if done != size:
            raise FetchError(f"file {index_cid}: {done} bytes, index says {size}")

    def publish(self, data: bytes) -> str:
        """Store a file as chunks plus index locally and on every peer; the index CID."""
        part = store_part(self.store, data)
        blocks = [c["cid"] for c in part["chunks"]] + [part["cid"]]
        for peer in self.peers:
            for cid in blocks:
                http_post(
                    f"{peer}/v1/content",
                    self.store.get(cid),
                    headers={"X-CID": cid},
                    idempotent=True,
                )
        return str(part["cid"])

    def manifest(self, cid: str) -> Manifest:
        return load_manifest(self.get(cid), cid)


def memory_in_use(use_gpu: bool) -> int:
    """Bytes in use where a model loads: this process's resident memory on the CPU (Linux's
    /proc; 0 elsewhere), the first GPU's used memory under NVML with one."""
    if use_gpu:
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(0)
                return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # no NVML: fall back to what the host can tell
            pass
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def providers(use_gpu: bool) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if use_gpu and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class _Arena:
    """The process's one capped CPU arena: ONNX Runtime registers an environment allocator
    once per process, so the first cap asked for is the one in force for every session."""

    lock = threading.Lock()
    cap: int | None = None


def cpu_arena(budget: int) -> int:
    """Register the capped CPU arena (once); the cap in force."""
    with _Arena.lock:
        if _Arena.cap is None:
            import onnxruntime as ort

            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            # Extending by what is asked, not by doubling, keeps the cap a cap on use.
            config = ort.OrtArenaCfg({"max_mem": budget, "arena_extend_strategy": 1})
            ort.create_and_register_allocator(info, config)
            _Arena.cap = budget
        return _Arena.cap


#: What ONNX Runtime's allocation failures say (BFCArena at its cap; CUDA out of memory).
_ALLOCATION_FAILED = ("Available memory of", "Failed to allocate", "out of memory", "bad_alloc")


def _run(session: Any, names: list[str], feed: dict[str, Any], budget: int) -> Any:
    try:
        return session.run(names, feed)
    except Exception as exc:  # onnxruntime's Fail / RuntimeException
        text = str(exc)
        if not any(s in text for s in _ALLOCATION_FAILED):
            raise
        detail = text.split("Status Message:")[-1].strip().splitlines()[0][-200:]
        raise OverBudgetError("the run", 0, budget, detail) from None


def _spans(counts: Sequence[int]) -> list[slice]:
    """The rows of each job in a pass over all jobs' inputs, `counts[i]` of them for job i."""
    ends = list(itertools.accumulate(counts))
    return [slice(end - count, end) for count, end in zip(counts, ends, strict=True)]


def _embeddings_document(vectors: np.ndarray, tokens: int) -> bytes:
    output = {"embeddings": vectors.tolist(), "prompt_tokens": tokens}
    return json.dumps(output, sort_keys=True).encode()


@dataclass
class Choosing:
    """One choice being decoded, a token a step: what each step's logits choose (seeded
    by its job: `processors.compute.generation.choose`), until the end-of-sequence token,
    a stop sequence or its token budget ends it. `generate` drives one at a time,
    `generate_together` a batch of them."""

    model: LoadedModel
    sampling: Sampling
    index: int
    max_tokens: int
    on_text: Callable[[StreamedToken], None] | None
    chosen: list[int] = field(default_factory=list)
    logits: list[float] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    sent: str = ""
    finish: str = "length"

    def take(self, row: np.ndarray) -> bool:
        """Choose after the step's logits `row`; whether the choice goes on."""
        sampling, model = self.sampling, self.model
        token = choose(row, sampling, self.index, len(self.chosen))
        if token == model.eos_token_id:
            self.finish = "stop"
            return False
        self.chosen.append(token)
        self.logits.append(float(row[token]))
        if sampling.logprobs:
            self.logprobs.append(model._logprob(row, token, sampling.top_logprobs))
        if self.on_text is not None or sampling.stop:
            self.text, stopped = cut_at_stop(model.decode(self.chosen), sampling.stop)
            if self.on_text is not None:
                self._stream(token, stopped)
            if stopped:
                self.finish = "stop"
                return False
        return len(self.chosen) < self.max_tokens

    def _stream(self, token: int, stopped: bool) -> None:
        assert self.on_text is not None
        hold = held_back(self.sampling.stop)
        ready = self.text if stopped else self.text[: len(self.text) - hold]
        added = ""
        if len(ready) > len(self.sent) and not ready.endswith("\ufffd"):
            added, self.sent = ready[len(self.sent) :], ready
        entry = self.logprobs[-1] if self.sampling.logprobs else None
        self.on_text(StreamedToken(self.index, len(self.chosen) - 1, token, added, entry))

    def choice(self) -> Choice:
        text = self.text if self.sampling.stop else self.model.decode(self.chosen)
        logprobs = tuple(self.logprobs) if self.sampling.logprobs else None
        return Choice(tuple(self.chosen), tuple(self.logits), text, self.finish, logprobs)


@dataclass
class LoadedModel:
    manifest: Manifest
    session: Any
    provider: str
    threads: int
    tokenizer: Any = None
    image_processor: Any = None  # a vision model's: images to pixel values
    eos_token_id: int | None = None
    kv_cache: KvCache | None = None  # None: a graph without one (generation re-reads all)
    #: An encoder-decoder's first decoder token (None: a decoder-only model).
    decoder_start: int | None = None
    #: Whether its cached graph takes an attention mask (prompts of different lengths then
    #: share a batch; graphs exported before the mask need one length).
    masked: bool = False
    #: The memory a job may need (bytes; 0: not checked before it runs).
    budget: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- memory ---------------------------------------------------------------------------

    #: What opening the session took, measured (resident memory on the CPU, device memory
    #: on a GPU; 0: not measured).
    measured_bytes: int = 0

    @property
    def weights_bytes(self) -> int:
        """What the manifest says the loaded graph holds (`models.weights_bytes`): what
        every job's budget starts from. Not the measured figure: verifier replicas must
        skip or run a re-execution alike, whatever their own processes measure."""
        return int(self.manifest.document.get("vram_required_bytes", 0))

    def within(self, what: str, needed: int) -> None:
        if self.budget and needed > self.budget:
            raise OverBudgetError(what, needed, self.budget)

    def generation_needs(self, prompt_tokens: int, max_tokens: int) -> int:
        """Bytes a generation of `max_tokens` after `prompt_tokens` would need."""
        limit = int(self.manifest.document.get("max_positions") or 1024)
        outputs = self.manifest.document.get("outputs", [])
        last = next((str(o["shape"][-1]) for o in outputs if o["name"] == "logits"), "")
        vocabulary = int(last) if last.isdigit() else 0
        cache = self.manifest.document.get("kv_cache")
        positions = min(prompt_tokens + max_tokens, limit)
        return generation_bytes(self.weights_bytes, vocabulary, positions, prompt_tokens, cache)

    def tensor_needs(self, inputs: bytes) -> int:
        """Bytes evaluating the `.npz` `inputs` would need (ValueError: not an `.npz`)."""
        document = self.manifest.document
        return tensor_job_bytes(
            self.weights_bytes, document.get("inputs", []), document.get("outputs", []), inputs
        )

    # -- text generation ------------------------------------------------------------------

    def prompt_ids(self, request: dict[str, Any]) -> list[int]:
        if "messages" in request and getattr(self.tokenizer, "chat_template", None):
            rendered = self.tokenizer.apply_chat_template(
                request["messages"], tokenize=False, add_generation_prompt=True
            )
        elif "messages" in request:
            # No template (most T5-style models): one "role: content" line a message.
            rendered = "\n".join(f"{m['role']}: {m['content']}" for m in request["messages"])
        else:
            rendered = str(request.get("prompt", ""))
        # An encoder reads the special tokens it was trained with (T5's closing </s>); a
        # decoder-only model continues the text as it is.
        special = self.decoder_start is not None
        ids = self.tokenizer(rendered, add_special_tokens=special)["input_ids"]
        return list(ids) or [self.eos_token_id or 0]

    def prompt(self, request: dict[str, Any]) -> list[int]:
        """The prompt a generation runs: the request's, its oldest tokens cut to leave room
        for at least one generated token."""
        limit = int(self.manifest.document.get("max_positions") or 1024)
        return self.prompt_ids(request)[-(limit - 1) :]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits for every position of one sequence: [len(ids), vocabulary]."""
        return self.step(ids, None)[0]

    def continuation(self, prompt: Sequence[int], generated: Sequence[int]) -> np.ndarray:
        """The logits that chose each of `generated` after `prompt`, and the next:
        [len(generated) + 1, vocabulary], in one teacher-forced pass (the verifier's)."""
        if self.decoder_start is not None:
            return self._decoded(prompt, generated)
        return self.logits([*prompt, *generated])[len(prompt) - 1 :]

    def _decoded(self, prompt: Sequence[int], generated: Sequence[int]) -> np.ndarray:
        """An encoder-decoder's logits for its start token and `generated`."""
        return np.asarray(self._decoded_rows([prompt], [generated])[0])

    def _decoded_rows(
        self, prompts: Sequence[Sequence[int]], generated: Sequence[Sequence[int]]
    ) -> np.ndarray:
        """`_decoded` for a batch: [rows, 1 + len(generated[0]), vocabulary]. The prompts
        are padded on the right and the padding masked (a graph without the mask, imported
        before it, takes one row); every row's `generated` is equally long."""
        longest = max(len(p) for p in prompts)
        feed = {
            "input_ids": np.asarray([[*p, *[0] * (longest - len(p))] for p in prompts], np.int64),
            "decoder_input_ids": np.asarray(
                [[self.decoder_start, *g] for g in generated], np.int64
            ),
        }
        if self.masked:
            mask = [[1] * len(p) + [0] * (longest - len(p)) for p in prompts]
            feed[ATTENTION_MASK] = np.asarray(mask, np.int64)
        with self.lock:
            (out,) = _run(self.session, ["logits"], feed, self.budget)
        return np.asarray(out, dtype=np.float32)

    def _advance(self, prompt: list[int], chosen: list[int], past: Any) -> tuple[np.ndarray, Any]:
        """Logits after `prompt` and `chosen` (the last row predicts the next token): with a
        cache only the newest token runs; without one, the whole sequence again."""
        if self.decoder_start is not None:
            return self._decoded(prompt, chosen), None
        if past is not None:
            return self.step(chosen[-1:], past)
        return self.step(prompt + chosen, None)

    def step(self, ids: Sequence[int], past: Any) -> tuple[np.ndarray, Any]:
        """Logits for `ids` following `past` (a cache this returned before, or None for
        the start of the sequence), and the cache including `ids` (None without one)."""
        rows, past = self.step_rows([ids], past)
        return rows[0], past

    def step_rows(
        self, rows: Sequence[Sequence[int]], past: Any, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, Any]:
        """`step` for a batch of equally long rows: [rows, len, vocabulary] logits. `mask`:
        which of the past's and the rows' positions each row reads (a masked graph's; by
        default all of them)."""
        feed: dict[str, Any] = {"input_ids": np.asarray([list(r) for r in rows], dtype=np.int64)}
        if self.kv_cache is None:
            with self.lock:
                (out,) = _run(self.session, ["logits"], feed, self.budget)
            return np.asarray(out, dtype=np.float32), None
        keys, values = past if past is not None else (self.kv_cache.empty(len(rows)),) * 2
        feed.update({PAST_KEYS: keys, PAST_VALUES: values})
        if self.masked:
            seen = keys.shape[3] + len(rows[0])
            feed[ATTENTION_MASK] = np.ones((len(rows), seen), np.int64) if mask is None else mask
        names = ["logits", "present_keys", "present_values"]
        with self.lock:
            out, keys, values = _run(self.session, names, feed, self.budget)
        return np.asarray(out, dtype=np.float32), (keys, values)

    def generate(
        self,
        request: dict[str, Any],
        on_text: Callable[[StreamedToken], None] | None = None,
        job_id: bytes = b"",
    ) -> Generation:
        """Decode `request["n"]` choices as its sampling asks (`processors.compute.generation`;
        SamplingError for bad parameters); `on_text` hears every choice's tokens as they
        come, one choice after the other."""
        sampling = Sampling.of(request, job_id)
        limit = int(self.manifest.document.get("max_positions") or 1024)
        prompt = self.prompt(request)
        max_tokens = max(1, min(int(request.get("max_tokens", 16)), limit - len(prompt)))
        self.within("the generation", self.generation_needs(len(prompt), max_tokens))
        # The prompt runs once; every choice continues from its logits (and cache).
        rows, past = self._advance(prompt, [], None)
        choices = tuple(
            self._continue(prompt, rows, past, max_tokens, sampling, index, on_text)
            for index in range(sampling.n)
        )
        return Generation(tuple(prompt), choices)

    def _continue(
        self,
        prompt: list[int],
        rows: np.ndarray,
        past: Any,
        max_tokens: int,
        sampling: Sampling,
        index: int,
        on_text: Callable[[StreamedToken], None] | None,
    ) -> Choice:
        choosing = Choosing(self, sampling, index, max_tokens, on_text)
        while choosing.take(rows[-1]):
            rows, past = self._advance(prompt, choosing.chosen, past)
        return choosing.choice()

    def batchable(self, request: dict[str, Any]) -> bool:
        """Whether a generation may share a batch (`generate_together`): one choice, from a
        decoder-only graph with a key/value cache or an encoder-decoder graph with a mask."""
        if self.manifest.task not in GENERATIVE or int(request.get("n", 1) or 1) != 1:
            return False
        if self.decoder_start is not None:
            return self.masked
        return self.kv_cache is not None

    def batch_group(self, request: dict[str, Any]) -> int:
        """The prompt length a generation's batch must share: 0 (any) for a masked graph,
        which pads the shorter prompts."""
        return 0 if self.masked else len(self.prompt(request))

    def generate_together(
        self, requests: Sequence[dict[str, Any]], job_ids: Sequence[bytes]
    ) -> list[Generation]:
        """Several single-choice generations (`batchable`) of one `batch_group`, as one
        batch: one pass of the graph per step for all of them (its batch dimension). A
        decoder-only model's shorter prompt is padded on the left, its padding masked out
        and its positions counted from its first token (an encoder's is padded on the
        right and masked), so each comes out as `generate` makes it alone, within the
        graph's numerical noise: every row is sampled with its own job's seed. A row that
        is done rides along until the longest is (its outputs unread)."""
        samplings = [Sampling.of(r, j) for r, j in zip(requests, job_ids, strict=True)]
        prompts = [self.prompt(r) for r in requests]
        if len({self.batch_group(r) for r in requests}) != 1 or not all(
            map(self.batchable, requests)
        ):
            raise ValueError("a batch needs single-choice generations of one batch group")
        limit = int(self.manifest.document.get("max_positions") or 1024)
        budgets = [
            max(1, min(int(r.get("max_tokens", 16)), limit - len(p)))
            for r, p in zip(requests, prompts, strict=True)
        ]
        longest = max(len(p) for p in prompts)
        if self.decoder_start is None and longest + max(budgets) > limit:
            # Every row runs to the longest budget: the longest prompt's positions would
            # pass the model's (each job alone stays within them).
            raise ValueError(
                f"a batch needs {longest + max(budgets)} positions; the model has {limit}"
            )
        # The weights once; every row's logits and cache, each running to the longest budget.
        row = self.generation_needs(longest, max(budgets)) - self.weights_bytes
        self.within("the generations", self.weights_bytes + row * len(requests))
        choosing = [
            Choosing(self, sampling, 0, budget, None)
            for sampling, budget in zip(samplings, budgets, strict=True)
        ]
        if self.decoder_start is not None:
            self._decode_together(prompts, choosing)
        else:
            self._step_together(prompts, choosing, longest)
        return [
            Generation(tuple(prompt), (c.choice(),))
            for prompt, c in zip(prompts, choosing, strict=True)
        ]

    def _step_together(
        self, prompts: list[list[int]], choosing: list[Choosing], longest: int
    ) -> None:
        """A decoder-only batch through the cache, the shorter prompts padded on the left."""
        pad = self.eos_token_id or 0
        mask = np.asarray([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], np.int64)
        padded = [[pad] * (longest - len(p)) + p for p in prompts]
        rows, past = self.step_rows(padded, None, mask)
        going = [c.take(row[-1]) for c, row in zip(choosing, rows, strict=True)]
        while any(going):
            last = [[(c.chosen or p)[-1]] for c, p in zip(choosing, prompts, strict=True)]
            mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
            rows, past = self.step_rows(last, past, mask)
            going = [
                on and c.take(row[-1]) for on, c, row in zip(going, choosing, rows, strict=True)
            ]

    def _decode_together(self, prompts: list[list[int]], choosing: list[Choosing]) -> None:
        """An encoder-decoder batch, each step over every row's output so far (a row that
        is done is padded to the others' length; the decoder reads no later position, so
        its padding changes no row's own logits)."""
        rows = self._decoded_rows(prompts, [[] for _ in prompts])
        going = [c.take(row[-1]) for c, row in zip(choosing, rows, strict=True)]
        while any(going):
            steps = max(len(c.chosen) for c in choosing)
            generated = [[*c.chosen, *[0] * (steps - len(c.chosen))] for c in choosing]
            rows = self._decoded_rows(prompts, generated)
            going = [
                on and c.take(row[len(c.chosen)])
                for on, c, row in zip(going, choosing, rows, strict=True)
            ]

    def _logprob(self, row: np.ndarray, token: int, top: int) -> dict[str, Any]:
        """A token's log-probability entry, with the step's `top` most likely tokens."""
        return {
            "id": token,
            "token": self.decode([token]),
            "logprob": float(log_softmax(row)[token]),
            "top": [
                {"id": t, "token": self.decode([t]), "logprob": lp}
                for t, lp in top_logprobs(row, top)
            ],
        }

    # -- embeddings -----------------------------------------------------------------------

    def embed(self, request: dict[str, Any]) -> tuple[bytes, np.ndarray]:
        """Sentence embeddings of `request["input"]`: the output document
        {"embeddings", "prompt_tokens"} and the vectors."""
        vectors, tokens = self._encode(request, "embeddings")
        return _embeddings_document(vectors, tokens), vectors

    def encodes_together(self) -> bool:
        """Whether its jobs may share one pass (`encode_together`): an encoder's
        (embeddings, text and image classification, CLIP's image-text scores: a model
        that pools its texts' last position, as SigLIP does, would read other jobs'
        padding)."""
        if self.manifest.task == IMAGE_TEXT:
            return self.manifest.document.get("model_type") == "clip"
        return self.manifest.task in ENCODERS

    def encode_together(self, requests: Sequence[dict[str, Any]]) -> list[tuple[bytes, np.ndarray]]:
        """What `embed` or `classify` gives each of these encoder jobs, from one pass over
        all their inputs: texts padded to the longest (the attention mask hides the wider
        padding), images made alike by the model's image processor. Each job's values come
        out within the graph's numerical noise of its own pass."""
        task = self.manifest.task
        if not self.encodes_together():
            raise ValueError(f"a {task} model's jobs do not share a pass")
        if task == IMAGE_CLASSIFICATION:
            return self._images_together(requests)
        if task == IMAGE_TEXT:
            return self._pairs_together(requests)
        lists = [self._text_list(request, "input") for request in requests]
        ids, mask = self._tokenised([text for texts in lists for text in texts])
        output = "embeddings" if task == EMBEDDING else "logits"
        values = self._pass(output, {"input_ids": ids, "attention_mask": mask}, *ids.shape)
        names = list(self.manifest.document.get("labels") or [])
        answers = []
        for rows in _spans([len(texts) for texts in lists]):
            part, tokens = values[rows], int(mask[rows].sum())
            if task == EMBEDDING:
                answers.append((_embeddings_document(part, tokens), part))
            else:
                answers.append((self._labels_document(part, tokens, names), part))
        return answers

    def _images_together(
        self, requests: Sequence[dict[str, Any]]
    ) -> list[tuple[bytes, np.ndarray]]:
        """Image classification jobs in one pass over all their images."""
        pictures = [self._pixels(request) for request in requests]
        pixels = np.concatenate(pictures)
        logits = self._pass("logits", {"pixel_values": pixels}, len(pixels), self._patches)
        names = list(self.manifest.document.get("labels") or [])
        answers = []
        for rows in _spans([len(p) for p in pictures]):
            part = logits[rows]
            tokens = self._patches * len(part)
            answers.append((self._labels_document(part, tokens, names), part))
        return answers

    def _pairs_together(self, requests: Sequence[dict[str, Any]]) -> list[tuple[bytes, np.ndarray]]:
        """Image-text jobs in one pass: every job's images against every job's texts (each
        pair's score depends on that image and that text alone), each job then reading
        its own images' rows and its own texts' columns."""
        pictures = [self._pixels(request) for request in requests]
        lists = [self._text_list(request, "texts") for request in requests]
        pixels = np.concatenate(pictures)
        ids, mask = self._tokenised([text for texts in lists for text in texts])
        feed = {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}
        logits = self._pass(
            "logits", feed, len(pixels) + len(ids), max(self._patches, ids.shape[1])
        )
        answers = []
        spans = zip(
            _spans([len(p) for p in pictures]), _spans([len(t) for t in lists]), lists, strict=True
        )
        for rows, columns, names in spans:
            part = logits[rows, columns]
            tokens = self._patches * len(part) + int(mask[columns].sum())
            answers.append((self._labels_document(part, tokens, names), part))
        return answers

    def classify(self, request: dict[str, Any]) -> tuple[bytes, np.ndarray]:
        """Labels and scores of each input: each text of `request["input"]`; for an image
        model each image of `request["images"]`; for an image-text model each image scored
        against `request["texts"]` (the texts are its labels, zero-shot). The output
        document {"labels": per input, every label with its score, likeliest first;
        "logits"; "prompt_tokens": the tokens, and image patches, read} and the logits."""
        task = self.manifest.document["task"]
        names = list(self.manifest.document.get("labels") or [])
        if task == IMAGE_CLASSIFICATION:
            pixels = self._pixels(request)
            logits = self._pass("logits", {"pixel_values": pixels}, len(pixels), self._patches)
            tokens = self._patches * len(pixels)
        elif task == IMAGE_TEXT:
            pixels = self._pixels(request)
            names, (ids, mask) = self._texts(request, "texts")
            feed = {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}
            logits = self._pass(
                "logits", feed, len(pixels) + len(ids), max(self._patches, ids.shape[1])
            )
            tokens = self._patches * len(pixels) + int(mask.sum())
        else:
            _, (ids, mask) = self._texts(request, "input")
            feed = {"input_ids": ids, "attention_mask": mask}
            logits, tokens = self._pass("logits", feed, *ids.shape), int(mask.sum())
        return self._labels_document(logits, tokens, names), logits

    def _labels_document(self, logits: np.ndarray, tokens: int, names: list[str]) -> bytes:
        """A classification's output document: each input's labels, likeliest first."""
        multi = self.manifest.document.get("problem_type") == "multi_label_classification"

        def ranked(row: np.ndarray) -> list[dict[str, Any]]:
            scores = [float(score) for score in label_scores(row, multi)]
            order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties by index
            label = [names[i] if i < len(names) else str(i) for i in range(len(scores))]
            return [{"label": label[i], "score": scores[i]} for i in order]

        labels = [ranked(row) for row in logits]
        output = {"labels": labels, "logits": logits.tolist(), "prompt_tokens": tokens}
        return json.dumps(output, sort_keys=True).encode()

    def _encode(self, request: dict[str, Any], output: str) -> tuple[np.ndarray, int]:
        """One pass of a text encoder over `request["input"]`: its `output` and the tokens
        read."""
        _, (ids, mask) = self._texts(request, "input")
        values = self._pass(output, {"input_ids": ids, "attention_mask": mask}, *ids.shape)
        return values, int(mask.sum())

    @property
    def _patches(self) -> int:
        return int(self.manifest.document.get("patches") or 1)

    def _texts(
        self, request: dict[str, Any], key: str
    ) -> tuple[list[str], tuple[np.ndarray, np.ndarray]]:
        """`request[key]` (a text or a list of texts) tokenised: each cut at the model's
        `max_positions` tokens, padded to the longest."""
        texts = self._text_list(request, key)
        return texts, self._tokenised(texts)

    def _text_list(self, request: dict[str, Any], key: str) -> list[str]:
        texts = request.get(key) if isinstance(request, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise EncoderInputError(f"{key}: a text or a non-empty list of texts")
        if len(texts) > MAX_ENCODER_INPUTS:
            raise EncoderInputError(f"{key}: at most {MAX_ENCODER_INPUTS} texts a job")
        return texts

    def _tokenised(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        limit = int(self.manifest.document.get("max_positions") or 512)
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=limit, return_tensors="np"
        )
        ids = np.asarray(encoded["input_ids"], dtype=np.int64)
        return ids, np.asarray(encoded["attention_mask"], dtype=np.int64)

    def _pixels(self, request: dict[str, Any]) -> np.ndarray:
        """`request["images"]` (base64 PNG or JPEG bytes, or one as `image`) as the model's
        image processor makes them into pixels."""
        images = request.get("images", [request["image"]] if "image" in request else None)
        if (
            not isinstance(images, list)
            or not images
            or not all(isinstance(i, str) for i in images)
        ):
            raise EncoderInputError("images: a non-empty list of base64 images (or one as image)")
        if len(images) > MAX_ENCODER_INPUTS:
            raise EncoderInputError(f"images: at most {MAX_ENCODER_INPUTS} a job")
        pictures = [decode_image(i, index) for index, i in enumerate(images)]
        made = self.image_processor(pictures, return_tensors="np")["pixel_values"]
        return np.asarray(made, dtype=np.float32)

    def _pass(
        self, output: str, feed: dict[str, np.ndarray], batch: int, positions: int
    ) -> np.ndarray:
        """One run of the graph for `output`, its memory estimated first (`batch` inputs of
        up to `positions` tokens or patches each)."""
        width = int(
            self.manifest.document.get("hidden_size")
            or self.manifest.document.get("dimensions")
            or 0
        )
        heads = max(1, width // 32)  # the attention scores' share; heads of 32 to 64 wide
        inputs = sum(value.nbytes for value in feed.values())
        self.within(
            "the job", embedding_bytes(self.weights_bytes, batch, positions, width, heads) + inputs
        )
        with self.lock:
            (values,) = _run(self.session, [output], feed, self.budget)
        return np.asarray(values, dtype=np.float32)

    # -- tensors --------------------------------------------------------------------------

    def run_tensors(self, inputs: bytes) -> bytes:
        """Evaluate an `.npz` of named inputs; the outputs come back as an `.npz`."""
        self.within("the tensor job", self.tensor_needs(inputs))
        with np.load(io.BytesIO(inputs), allow_pickle=False) as arrays:
            feed = {name: arrays[name] for name in arrays.files}
        with self.lock:
            names = [o.name for o in self.session.get_outputs()]
            values = _run(self.session, names, feed, self.budget)
        buffer = io.BytesIO()
        np.savez(buffer, **dict(zip(names, values, strict=True)))
        return buffer.getvalue()


class ModelCache:
    """Loaded models by manifest CID (one session per model and process)."""

    def __init__(
        self,
        source: BlockSource,
        work_dir: Path,
        threads: int,
        use_gpu: bool,
        memory_budget: int = 0,
    ) -> None:
        """`memory_budget`: bytes a model and its job may take on the device that runs it
        (0: three quarters of this machine's memory)."""
        self.source = source
        self.work_dir = Path(work_dir)
        self.threads = threads
        self.use_gpu = use_gpu
        self.budget = default_budget(memory_budget)
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def loaded(self, manifest_cid: str) -> LoadedModel | None:
        """The model if it is loaded already (None: a `load` would fetch and open it)."""
        with self._lock:
            return self._models.get(manifest_cid)

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

    def image_processor(self, manifest_cid: str) -> Any:
        """The model's own image processor (resizing and normalising as it was trained), in
        its Pillow form (transformers' default form needs torchvision): every node runs the
        same pinned code, so pixels agree."""
        directory = self.unpacked(manifest_cid, "tokenizer")[1]
        return pillow_image_processor(directory).from_pretrained(directory)

    def _graph(self, manifest: Manifest, manifest_cid: str) -> bytes | str:
        """What ONNX Runtime loads: the graph's bytes, or for one with its tensors in a
        weights file the path of the graph written beside that file. A graph reading
        tensors from anywhere else is refused (whoever registered it wrote the locations)."""
        structure = self.source.part(manifest, "onnx")
        allowed = {WEIGHTS_FILE} if "weights" in manifest.document else set()
        try:
            locations = external_locations(structure)
        except ModelImportError as exc:
            raise FetchError(f"model {manifest_cid}: {exc}") from None
        if not locations <= allowed:
            elsewhere = sorted(locations - allowed)
            raise FetchError(
                f"model {manifest_cid}: its graph reads tensors from {elsewhere}, not from "
                "its own weights"
            )
        if "weights" not in manifest.document:
            return structure
        directory = self.work_dir / "graph" / manifest_cid
        if not directory.exists():
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=directory.parent))
            (tmp / GRAPH_FILE).write_bytes(structure)
            self.source.write_file(manifest.document["weights"]["cid"], tmp / WEIGHTS_FILE)
            os.replace(tmp, directory)
        return str(directory / GRAPH_FILE)

    def _load(self, manifest_cid: str) -> LoadedModel:
        import onnxruntime as ort

        manifest = self.source.manifest(manifest_cid)
        weights = int(manifest.document.get("vram_required_bytes", 0))
        if weights > self.budget:
            name = manifest.document.get("name", manifest_cid)
            raise OverBudgetError(f"model {name}", weights, self.budget)
        graph = self._graph(manifest, manifest_cid)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        chosen: list[Any] = list(providers(self.use_gpu))
        if chosen[0] == "CUDAExecutionProvider":
            cuda = {"gpu_mem_limit": str(self.budget), "arena_extend_strategy": "kSameAsRequested"}
            chosen[0] = (chosen[0], cuda)
            cpu_arena(default_budget(0))  # the CPU side holds inputs and fallback kernels
        else:
            cpu_arena(self.budget)
        options.add_session_config_entry("session.use_env_allocators", "1")
        before = memory_in_use(self.use_gpu)
        try:
            session = ort.InferenceSession(graph, sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime's Fail / RuntimeException
            if not any(s in str(exc) for s in _ALLOCATION_FAILED):
                raise
            raise OverBudgetError("loading the model", weights, self.budget) from None
        model = LoadedModel(manifest, session, session.get_providers()[0], self.threads)
        model.budget = self.budget
        model.measured_bytes = max(0, memory_in_use(self.use_gpu) - before)
        name = manifest.document.get("name", manifest_cid)
        log.info(
            "model %s loaded: %d MiB estimated, %d MiB measured",
            name,
            model.weights_bytes >> 20,
            model.measured_bytes >> 20,
        )
        if model.measured_bytes > model.weights_bytes:
            log.warning("model %s takes more memory than its manifest says", name)
        if manifest.task in (*GENERATIVE, EMBEDDING, CLASSIFICATION, IMAGE_TEXT):
            model.tokenizer = self.tokenizer(manifest_cid)
        if manifest.task in (IMAGE_CLASSIFICATION, IMAGE_TEXT):
            model.image_processor = self.image_processor(manifest_cid)
        if manifest.task in GENERATIVE:
            model.eos_token_id = manifest.document.get("eos_token_id")
            cache = manifest.document.get("kv_cache")
            model.kv_cache = KvCache(**cache) if cache else None
            model.masked = ATTENTION_MASK in {i.name for i in session.get_inputs()}
        if manifest.task == SEQ2SEQ:
            model.decoder_start = int(manifest.document.get("decoder_start_token_id") or 0)
        return model
