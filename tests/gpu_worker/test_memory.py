"""A job whose model would exhaust the worker's memory fails that job, not the worker: on
the real embedded broker, real ONNX Runtime and real (small) graphs, the worker answers
two over-budget jobs with signed failures and then serves a normal job."""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.processor import ASSIGNED, RESULTS, Worker
from processors.compute.models import import_model
from processors.market.content import Blockstore
from processors.market.jobs import recover, result_hash
from processors.runtime import Runtime
from processors.state import RocksStore
from processors.verifier import core
from schemas.codec import default_codec
from schemas.events import JobResult
from streams.admin import ensure_topics
from streams.broker import EmbeddedBroker
from streams.kafka import Producer
from streams.settings import Settings
from streams.topics import hex_key
from tests import market_events
from tests.processors.harness import read_all, run_while

pytestmark = pytest.mark.broker
KEY = b"\x52" * 32
BUDGET = 256 << 20


def graph(nodes: list[object], inputs: list[object], outputs: list[object]) -> bytes:
    from onnx import helper

    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())


def outer_model() -> bytes:
    """y[n, n] = x[n] ⊗ x[n]: its output's size is declared by its input's."""
    from onnx import TensorProto, helper

    shape = helper.make_tensor("s", TensorProto.INT64, [2], [-1, 1])
    return graph(
        [
            helper.make_node("Constant", [], ["s"], value=shape),
            helper.make_node("Reshape", ["x", "s"], ["column"]),
            helper.make_node("Mul", ["column", "x"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "n"])],
    )


def filler_model() -> bytes:
    """y = ones(shape): a size no declaration bounds, computed from the input's values."""
    from onnx import TensorProto, helper

    one = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    return graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["y"], value=one)],
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "columns"])],
    )


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap, [ASSIGNED, RESULTS])
        yield broker


def test_an_over_budget_job_fails_alone_and_the_worker_serves_the_next(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, worker_memory_bytes=BUDGET)
    worker = Worker(settings, own_broker.bootstrap, KEY, None)
    store = Blockstore(worker.work / "blockstore")  # where the worker looks first
    cids = {}
    for name, data in (("outer", outer_model()), ("filler", filler_model())):
        (tmp_path / f"{name}.onnx").write_bytes(data)
        cids[name] = import_model(tmp_path / f"{name}.onnx", name, store).cid
    jobs = [
        # Declared: a 40,000² float output is 6.4 GB, refused before it runs.
        ("outer", npz(x=np.zeros(40_000, np.float32))),
        # Undeclared: 2²⁰ by 2²⁰ floats (4 TiB), refused by ONNX Runtime's capped arena.
        ("filler", npz(shape=np.asarray([1 << 20, 1 << 20], np.int64))),
        ("outer", npz(x=np.arange(3, dtype=np.float32))),  # a normal job, served after
    ]
    state = RocksStore(tmp_path / "state")
    runtime: Runtime[RocksStore] = Runtime(worker, state, own_broker.bootstrap)
    runtime.open()
    producer = Producer(own_broker.bootstrap)
    lease = int(time.time() * 1000) + 60_000
    for n, (name, data) in enumerate(jobs):
        job_id = n.to_bytes(32, "big")
        job = dataclasses.replace(
            market_events.submitted(job_id, deadline_ms=lease),
            params={"manifest_cid": cids[name]},
            input=data,
        )
        assigned = dataclasses.replace(
            market_events.assigned(job_id, 0, [worker.address]), job=job, lease_expires_ms=lease
        )
        producer.send(ASSIGNED, assigned, key=hex_key(job_id)).result(30)
    producer.close()

    codec = default_codec()

    def results() -> dict[int, JobResult]:
        raw = read_all(own_broker.bootstrap, RESULTS.name)
        decoded = (codec.decode_as(r, JobResult) for r in raw)
        return {int.from_bytes(r.job_id, "big"): r for r in decoded}

    failures = run_while(runtime, lambda: len(results()) == len(jobs), 60)
    state.close()
    worker.producer.close()
    assert failures == []  # the worker never died
    answered = results()
    assert sorted(answered) == [0, 1, 2]
    for n in (0, 1):
        failure = core.failure_of(answered[n])
        assert failure is not None and failure["code"] == "over_budget", failure
        assert "budget of 256 MiB" in failure["message"]
    assert "needs about 12," in str(core.failure_of(answered[0]))  # GB of output, twice
    # Signed like any answer: the verifier refunds it (INCONCLUSIVE), neither pays nor slashes.
    signer = recover(result_hash(answered[1], settings.chain_id), answered[1].signature)
    assert signer == worker.address
    checks = [core.check_signature(answered[1], settings.chain_id), core.check_output(answered[1])]
    checks.append(core.check_failure(answered[1]))  # type: ignore[arg-type]
    assert core.outcome(checks) == core.INCONCLUSIVE
    served = answered[2]
    assert served.fingerprint_scheme == core.TENSOR_SCHEME
    with np.load(io.BytesIO(served.output or b"")) as arrays:
        np.testing.assert_array_equal(arrays["y"], np.outer([0, 1, 2], [0, 1, 2]))
