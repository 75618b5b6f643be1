"""Inference through the market vs calling ONNX Runtime directly, and the verifier's cost.

    .venv/bin/python bench/bench_market.py [--jobs 200] [--tokens 8] [--workers 2] [--model DIR]
        [--block-interval 1.0]

Starts a devnet with local workers, imports a model (by default the tiny GPT-2 the tests
build locally; `--model` takes any local Hugging Face causal-LM directory), then runs the
same greedy generation (same prompt, same token count):

- direct: `LoadedModel.generate` in this process on the imported ONNX graph (the worker's
  runtime code, one thread, no network) — the peer;
- market: the official `openai` client against `/v1/completions`, one request at a time
  (latency) and from 8 threads (throughput): signed job, matcher, worker, signed result;
- verifier: the re-execution a verifier does per result (one teacher-forced pass and the
  tolerance checks) against the worker's generation, in this process.

Prints p50/p99 latency and jobs/s for each, the market's overhead (market p50 - direct
p50) and the throughput of 8 clients over one at a time, each beside its target (issue 14:
overhead under 10 ms, 8 clients at least 5x), and for each market phase the CPU the
devnet's processes spent per job (from /proc: the broker, the devnet process with its
gateway and archiver, each processor and worker, and this client). Wall-clock figures from
this machine; compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_rpc import start_lattice  # noqa: E402  (bench/ is the script's directory)
from cpu import cpu_by_process, report_cpu  # noqa: E402

from gpu_worker.processor import execute  # noqa: E402
from processors.compute.models import import_model  # noqa: E402
from processors.compute.runtime import BlockSource, ModelCache  # noqa: E402
from processors.market.content import Blockstore  # noqa: E402
from processors.verifier import core  # noqa: E402
from schemas.events import JobSubmitted  # noqa: E402

PROMPT = "the quick brown fox"
#: Issue 14's targets: the market's overhead over direct ONNX Runtime (p50, ms), and the
#: throughput of 8 concurrent clients over one at a time.
TARGET_OVERHEAD_MS = 10.0
TARGET_SCALING = 5.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(label: str, latencies_ms: list[float], jobs_per_s: float | None = None) -> None:
    rate = f"  {jobs_per_s:8.1f} jobs/s" if jobs_per_s is not None else ""
    print(
        f"  {label:<34} p50 {percentile(latencies_ms, 0.5):8.2f} ms  "
        f"p99 {percentile(latencies_ms, 0.99):8.2f} ms{rate}",
        flush=True,
    )


def start_devnet(
    tmp: Path, workers: int, blocks: tuple[float, int]
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A devnet with `workers` local workers, its dev API key written and nodes announced;
    `blocks`: its block interval and finality depth."""
    process, url = start_lattice(tmp, "--workers", str(workers), blocks=blocks)
    data = tmp / "lattice"
    deadline = time.monotonic() + 180
    while (
        not (data / "api-key").exists()
        or len(httpx.get(f"{url}/v1/nodes").json()["nodes"]) < workers
    ):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the devnet did not come up (see the logs in {data})")
        time.sleep(0.5)
    return process, url, data


def bench_direct(model: Any, tokens: int, jobs: int) -> list[float]:
    """The peer: the worker's own generation, in this process; then the verifier's check."""
    payload = {"prompt": PROMPT, "max_tokens": tokens}
    job = JobSubmitted(
        job_id=hashlib.sha256(b"bench").digest(),
        requester=bytes(20),
        kind="INFERENCE",
        model_id="bench-model",
        input_cid="",
        required_vram_bytes=0,
        max_price_wei=0,
        deadline_ms=0,
        nonce=0,
        submitted_at_ms=0,
        signature=b"",
        input=json.dumps(payload).encode(),
    )
    direct = []
    for _ in range(jobs):
        started = time.perf_counter()
        output, _, fingerprint = execute(model, job)
        direct.append((time.perf_counter() - started) * 1000)
    report("direct ONNX Runtime (peer)", direct, 1000 / statistics.mean(direct))
    verify = []
    generated = json.loads(output)["token_ids"]
    for _ in range(jobs):
        started = time.perf_counter()
        prompt = model.prompt(payload)
        logits = model.continuation(prompt, generated)
        assert core.check_generation(
            output, fingerprint, [logits], len(prompt), model.eos_token_id
        ).passed
        verify.append((time.perf_counter() - started) * 1000)
    report("verifier re-execution per result", verify, 1000 / statistics.mean(verify))
    return direct


def import_into(data: Path, model_dir: Path) -> None:
    imported = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy.cli",
            "model",
            "import",
            str(model_dir),
            "--name",
            "bench-model",
            "--dev-account",
            "1",
            "--data-dir",
            str(data),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if imported.returncode != 0:
        raise RuntimeError(imported.stderr)


def bench_market(
    url: str, data: Path, tokens: int, jobs: int, devnet: int
) -> tuple[list[float], float, float]:
    """Completions through the market: one at a time, then from 8 threads; the latencies
    one at a time, and the jobs per second of each."""
    key = (data / "api-key").read_text().strip()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    calls: dict[str, tuple[float, float]] = {}  # job id: sent and answered, epoch ms

    def one() -> float:
        sent, started = time.time() * 1000, time.perf_counter()
        answer = client.completions.create(model="bench-model", prompt=PROMPT, max_tokens=tokens)
        calls[answer.model_extra["lattice"]["job_id"]] = (sent, time.time() * 1000)
        return (time.perf_counter() - started) * 1000

    for _ in range(5):
        one()  # workers load the model on their first job
    calls.clear()
    cpu, started = cpu_by_process(devnet), time.perf_counter()
    market = [one() for _ in range(jobs)]
    elapsed = time.perf_counter() - started
    report("market, one at a time", market, jobs / elapsed)
    report_cpu(cpu, cpu_by_process(devnet), jobs, elapsed)
    hops(data, dict(calls))
    cpu, started = cpu_by_process(devnet), time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda _: one(), range(jobs)))
    elapsed_8 = time.perf_counter() - started
    report("market, 8 concurrent clients", concurrent, jobs / elapsed_8)
    report_cpu(cpu, cpu_by_process(devnet), jobs, elapsed_8)
    return market, jobs / elapsed, jobs / elapsed_8


def hops(data: Path, calls: dict[str, tuple[float, float]]) -> None:
    """Where one-at-a-time jobs spend their time, from the records' own timestamps (each
    producer's create time, ms): the gateway's request to its JobSubmitted, the matcher's
    JobAssigned, the worker's JobResult, and the answer's arrival back at the client. The
    worker's leg is split by the result's own clock readings: when it began the job
    (`submitted_at_ms + queue_ms`) and when it signed the result (`completed_at_ms`)."""
    from streams.kafka import Reader, from_beginning
    from streams.topics import topic

    kafka = json.loads((data / "devnet.json").read_text())["kafka"]
    reader = Reader(kafka, client_id="bench-hops")
    stamps: dict[str, dict[str, float]] = {}
    try:
        for name in ("submitted", "assigned", "results"):
            full = topic(f"jobs.{name}").name
            positions = from_beginning(full, reader.partitions(full))
            for message in reader.read(positions):
                if message.error() is not None or message.value() is None:
                    continue
                record = reader.decode(message)
                event = record.event
                seen = stamps.setdefault("0x" + bytes(getattr(event, "job_id", b"")).hex(), {})
                seen.setdefault(name, float(record.timestamp_ms))
                if name == "submitted":
                    seen["created"] = float(event.submitted_at_ms)
                if name == "results" and "began" not in seen and "created" in seen:
                    seen["began"] = seen["created"] + event.timings.queue_ms
                    seen["signed"] = float(event.completed_at_ms)
    finally:
        reader.close()
    legs: dict[str, list[float]] = {
        "client -> JobSubmitted": [],
        "JobSubmitted -> JobAssigned": [],
        "JobAssigned -> worker begins": [],
        "worker runs and signs": [],
        "signed -> JobResult": [],
        "JobResult -> client": [],
    }
    order = ("submitted", "assigned", "began", "signed", "results")
    for job_id, (sent, answered) in calls.items():
        seen = stamps.get(job_id, {})
        if not all(point in seen for point in order):
            continue
        points = [sent, *(seen[point] for point in order), answered]
        for leg, (a, b) in zip(legs, itertools.pairwise(points), strict=True):
            legs[leg].append(b - a)
    for leg, values in legs.items():
        if values:
            report(f"  {leg}", values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a Hugging Face causal-LM directory")
    parser.add_argument(
        "--block-interval",
        type=float,
        default=1.0,
        help="the devnet's block interval (default 1 s, as `lattice devnet` runs)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from tests.tiny_models import build_tiny_gpt2

            model_dir = build_tiny_gpt2(Path(tmp) / "tiny-gpt2")
        store = Blockstore(Path(tmp) / "blocks")
        manifest = import_model(model_dir, "bench-model", store)
        model, _ = ModelCache(BlockSource(store), Path(tmp) / "work", 1, False).load(manifest.cid)
        print(
            f"model: {manifest.document['model_type']}, {manifest.document['parameter_count']} "
            f"parameters; {args.tokens} tokens per job, {args.jobs} jobs; "
            f"blocks every {args.block_interval} s from each of 2 proposers",
            flush=True,
        )
        direct = bench_direct(model, args.tokens, args.jobs)
        blocks = (args.block_interval, 10)  # the devnet's finality depth
        # The gateway's per-key rate limit (50 a second, a public gateway's) is off: this
        # measures the market's path, and a faster run would meet the limiter instead.
        os.environ["LATTICE_RATE_LIMIT"] = "0"
        process, url, data = start_devnet(Path(tmp), args.workers, blocks)
        try:
            import_into(data, model_dir)
            market, one, eight = bench_market(url, data, args.tokens, args.jobs, process.pid)
            overhead = percentile(market, 0.5) - percentile(direct, 0.5)
            met = {True: "met", False: "NOT met"}
            print(
                f"  market overhead over direct (p50): {overhead:.2f} ms"
                f"   target < {TARGET_OVERHEAD_MS:.0f} ms: {met[overhead < TARGET_OVERHEAD_MS]}\n"
                f"  8 clients over one at a time:      x{eight / one:.2f}"
                f"      target >= x{TARGET_SCALING:.0f}: {met[eight / one >= TARGET_SCALING]}",
                flush=True,
            )
        finally:
            process.terminate()
            process.wait(60)


if __name__ == "__main__":
    main()
