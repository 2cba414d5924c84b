"""The runtime as a service component: the machine-readable concurrency contract, warm-up, asyncio
inference (ONNX Runtime's run_async, a worker thread elsewhere), every output of multi-output graphs, and
the PyTorch backend over a model already in memory."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import psvit
from psvit.runtime import Concurrency, RuntimeInputError, from_model, load

pytest.importorskip("onnxruntime", reason="ONNX Runtime runs the exported graphs (pip install onnxruntime)")
RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def onnx_b3(tmp_path_factory):
    from psvit.export import export_onnx

    path = tmp_path_factory.mktemp("svc") / "demo_b3.onnx"
    export_onnx("demo", path, batch=3, count=2)
    return path


def two_output_graph(batch: int | str = "N") -> bytes:
    """x (N, 3, 4, 4) -> relu(x) (N, 3, 4, 4) and mean over H, W (N, 3): an artifact with two outputs."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["relu"]),
             helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0)]
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 4])],
                              [helper.make_tensor_value_info("relu", TensorProto.FLOAT, [batch, 3, 4, 4]),
                               helper.make_tensor_value_info("mean", TensorProto.FLOAT, [batch, 3])], [axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def test_concurrency_contract_per_backend(demo_fp32_onnx):
    ort = load(demo_fp32_onnx)
    assert ort.concurrency == Concurrency(thread_safe=True, max_parallel=None, mechanism="none")
    assert ort.info()["concurrency"] == {"thread_safe": True, "max_parallel": None, "mechanism": "none"}
    torch_rt = load("demo")
    assert torch_rt.info()["concurrency"]["mechanism"] == "none"  # CPU: forward passes run in parallel
    assert "thread_safety" not in ort.info()  # the contract replaced the free text


def test_warmup_prepares_the_batch_sizes_the_artifact_runs(onnx_b3, demo_fp32_onnx):
    assert set(load(onnx_b3).warmup()) == {3}  # a fixed-batch graph runs only its batch
    assert set(load(demo_fp32_onnx, chunk=4).warmup()) == {1, 4}
    assert set(load(demo_fp32_onnx).warmup([2, 5], iterations=1)) == {2, 5}
    with pytest.raises(RuntimeInputError, match="at least 1"):
        load(demo_fp32_onnx).warmup(iterations=0)


@pytest.mark.parametrize("which", ["dynamic", "b3", "torch"])
def test_ainfer_matches_infer_and_interleaves(which, onnx_b3, demo_fp32_onnx):
    rt = {"dynamic": lambda: load(demo_fp32_onnx), "b3": lambda: load(onnx_b3), "torch": lambda: load("demo")}[which]()
    inputs = [RNG.standard_normal((n, 3, 32, 32), dtype=np.float32) for n in (1, 4, 7, 2, 5)]
    expected = [rt.infer(x) for x in inputs]

    async def main() -> list[np.ndarray]:
        return await asyncio.wait_for(asyncio.gather(*(rt.ainfer(x) for x in inputs)), timeout=60)

    for got, want in zip(asyncio.run(main()), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_ainfer_uses_onnxruntime_run_async(demo_fp32_onnx):
    rt = load(demo_fp32_onnx)
    assert hasattr(rt.backend.session, "run_async"), "this ONNX Runtime has no run_async"
    threads: set[str] = set()
    original = rt.backend.session.run_async

    def spy(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return original(*args, **kwargs)

    rt.backend.session.run_async = spy
    out = asyncio.run(asyncio.wait_for(rt.ainfer(np.zeros((2, 3, 32, 32), np.float32)), timeout=60))
    assert out.shape == (2, 10) and threads == {"MainThread"}  # called from the event loop, no worker thread


def test_every_output_is_returned_as_a_dict():
    x = RNG.standard_normal((5, 3, 4, 4), dtype=np.float32)
    for batch in ("N", 2):  # a fixed batch of 2: five rows run as 2 + 2 + 1 padded
        rt = load(two_output_graph(batch), name="two outputs")
        assert rt.output_names == ["relu", "mean"] and rt.info()["outputs"] == ["relu", "mean"]
        out = rt.infer(x)
        assert set(out) == {"relu", "mean"}
        np.testing.assert_allclose(out["relu"], np.maximum(x, 0), rtol=0, atol=0)
        np.testing.assert_allclose(out["mean"], x.mean(axis=(2, 3)), rtol=1e-6, atol=1e-6)
        aout = asyncio.run(asyncio.wait_for(rt.ainfer(x), timeout=60))
        np.testing.assert_array_equal(aout["mean"], out["mean"])


def test_compare_pairs_every_output():
    from psvit.export import compare

    graph = two_output_graph()
    result = compare(load(graph, name="a"), load(graph, name="b"), RNG.standard_normal((3, 3, 4, 4), dtype=np.float32))
    assert [o.name for o in result.outputs] == ["relu", "mean"] and result.worst_rel_l2 == 0.0


def test_from_model_runs_the_model_it_is_given():
    torch = pytest.importorskip("torch")
    ckpt = psvit.load_checkpoint("demo")
    rt = from_model(ckpt.model, name="demo in memory", class_names=ckpt.class_names, chunk=3)
    assert rt.backend.model is ckpt.model and rt.name == "demo in memory" and rt.class_names == ckpt.class_names
    x = RNG.standard_normal((7, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        want = ckpt.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(rt.infer(x), want, rtol=0, atol=1e-5)
    with pytest.raises(psvit.PSViTError, match="runs PSViT models"):
        from_model(torch.nn.Linear(2, 2))
