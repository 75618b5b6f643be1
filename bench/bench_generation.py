"""Greedy generation on ONNX Runtime with and without the key/value cache, beside torch.

    .venv/bin/python bench/bench_generation.py [--tokens 16 64 256] [--layers 4] [--width 256]

Builds a randomly initialised GPT-2 locally (`tests/tiny_models.py`; nothing downloaded),
imports it twice through the real importer (`lattice model import`'s code): once as it is
now, with the cache in the graph, and once forced onto the plain graph (logits only, as
before the cache). Each generates the same number of tokens from the same prompt with the
worker's runtime code (`LoadedModel.generate`, one thread). The peer is transformers'
own greedy `generate` in torch with its cache, also one thread. Prints ms per generated
token and tokens/s for each, and checks the two ONNX runs chose the same tokens. Then a
worker's batch: `--batch` prompts of different lengths generated one after the other and
as one padded batch (`LoadedModel.generate_together`), checked to choose the same tokens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from processors.compute import models  # noqa: E402
from processors.compute.runtime import BlockSource, LoadedModel, ModelCache  # noqa: E402
from processors.market.content import Blockstore  # noqa: E402
from tests.tiny_models import build_tiny_gpt2  # noqa: E402

PROMPT = "the quick brown fox"


def load(directory: Path, work: Path, cached: bool) -> LoadedModel:
    exporter = models._kv_cache_of
    if not cached:

        def refuse(model: Any) -> models.KvCache:
            raise TypeError("plain graph asked for")

        models._kv_cache_of = refuse
    try:
        store = Blockstore(work / "store")
        manifest = models.import_model(directory, "bench", store)
    finally:
        models._kv_cache_of = exporter
    model, _ = ModelCache(BlockSource(store), work / "cache", 1, use_gpu=False).load(manifest.cid)
    return model


def timed(run: Any, repeats: int) -> float:
    """Best of `repeats` wall-clock seconds (after one warm-up)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="prompts in the batch row")
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        positions = max(args.tokens) + 64
        directory = build_tiny_gpt2(
            work / "model", layers=args.layers, width=args.width, heads=4, positions=positions
        )
        print(f"GPT-2, {args.layers} layers, width {args.width}; importing twice", flush=True)
        cached, plain = (
            load(directory, work / "cached", True),
            load(directory, work / "plain", False),
        )
        reference = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
        prompt = cached.prompt_ids({"prompt": PROMPT})
        print(f"prompt {len(prompt)} tokens; best of {args.repeats}, one thread each")
        heads = ("ONNX + cache", "ONNX, plain graph", "torch generate")
        print(f"  {'tokens':>6}  " + "  ".join(f"{h:>22}" for h in heads))
        for count in args.tokens:
            # An end-of-text token would stop one run early; these weights are random.
            request = {"prompt": PROMPT, "max_tokens": count}
            a, b = cached.generate(request), plain.generate(request)
            (a_choice,), (b_choice,) = a.choices, b.choices
            assert a_choice.token_ids == b_choice.token_ids, "the cache changed the tokens chosen"
            made = len(a_choice.token_ids)
            ids = torch.tensor([prompt])

            def in_torch(made: int = made, ids: Any = ids) -> None:
                with torch.no_grad():
                    reference.generate(
                        ids, max_new_tokens=made, min_new_tokens=made, do_sample=False
                    )

            figures = [
                timed(lambda r=request: cached.generate(r), args.repeats),
                timed(lambda r=request: plain.generate(r), args.repeats),
                timed(in_torch, args.repeats),
            ]
            cells = [f"{s * 1000 / made:7.2f} ms/tok {made / s:7.0f}/s" for s in figures]
            print(f"  {made:>6}  " + "  ".join(f"{c:>22}" for c in cells), flush=True)
        batch_row(cached, args.batch, min(args.tokens), args.repeats)


def batch_row(model: LoadedModel, size: int, count: int, repeats: int) -> None:
    """`size` greedy generations of `count` tokens from prompts of different lengths: one
    after the other, then as one batch (shorter prompts padded on the left and masked)."""
    words = PROMPT.split()
    requests = [
        {"prompt": " ".join(words * (1 + i))[: 4 + 9 * i], "max_tokens": count} for i in range(size)
    ]
    lengths = sorted(len(model.prompt(r)) for r in requests)
    job_ids = [bytes([i]) * 32 for i in range(size)]
    alone = [
        model.generate(r, None, j).choices[0].token_ids
        for r, j in zip(requests, job_ids, strict=True)
    ]
    together = model.generate_together(requests, job_ids)
    assert [g.choices[0].token_ids for g in together] == alone, "the batch changed the tokens"
    made = sum(len(t) for t in alone)
    one_by_one = timed(lambda: [model.generate(r) for r in requests], repeats)
    batched = timed(lambda: model.generate_together(requests, job_ids), repeats)
    print(f"batch of {size} prompts of {lengths[0]}-{lengths[-1]} tokens, {count} tokens each:")
    for label, seconds in (("one after the other", one_by_one), ("one batch", batched)):
        rate = f"{seconds * 1000 / made:7.2f} ms/tok {made / seconds:7.0f}/s"
        print(f"  {label:<22}{rate}", flush=True)


if __name__ == "__main__":
    main()
