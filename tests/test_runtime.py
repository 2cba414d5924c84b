"""psvit.runtime: loading, chunking/padding, parity, inputs, corrupt artifacts, thread safety."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import psvit
from psvit.errors import MissingDependencyError, PSViTError
from psvit.runtime import ArtifactError, BackendError, RuntimeInputError, load
from psvit.runtime.batching import BatchLimits, chunk_plan, pad_rows

pytest.importorskip("onnxruntime", reason="ONNX Runtime runs the exported graphs (pip install onnxruntime)")
RNG = np.random.default_rng(0)


def demo_onnx(factory: pytest.TempPathFactory, batch: str | int = "dynamic") -> Path:
    """The demo model exported once per session (shared with the other runtime test modules)."""
    from psvit.export import export_onnx

    path = factory.getbasetemp() / "runtime_onnx" / f"demo_{batch}.onnx"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        export_onnx("demo", path, batch=batch)
    return path


@pytest.fixture(scope="module")
def onnx_dynamic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def onnx_b4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_onnx(tmp_path_factory, 4)


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray]:
    """Inputs (9, 3, 32, 32) and the PyTorch model's logits for them."""
    import torch

    x = RNG.standard_normal((9, 3, 32, 32), dtype=np.float32)
    model = psvit.load_checkpoint("demo").model
    with torch.no_grad():
        return x, model(torch.from_numpy(x)).numpy()


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---- chunk plans ----------------------------------------------------------------------------------
def test_chunk_plan_static_batch_pads_the_last_chunk():
    assert chunk_plan(9, BatchLimits(static=4)) == [(0, 4, 4), (4, 8, 4), (8, 9, 4)]
    assert chunk_plan(1, BatchLimits(static=4)) == [(0, 1, 4)]


def test_chunk_plan_profile_range_and_chunk_cap():
    limits = BatchLimits(min_batch=2, max_batch=8)
    assert chunk_plan(17, limits) == [(0, 8, 8), (8, 16, 8), (16, 17, 2)]  # last chunk padded to the profile min
    assert chunk_plan(5, BatchLimits(), chunk=2) == [(0, 2, 2), (2, 4, 2), (4, 5, 1)]
    assert chunk_plan(5, BatchLimits()) == [(0, 5, 5)]
    assert chunk_plan(20, BatchLimits(max_batch=16), chunk=6)[0] == (0, 6, 6)


def test_pad_rows_appends_zeros():
    x = np.ones((3, 2), np.float32)
    y = pad_rows(x, 5)
    assert y.shape == (5, 2) and y[:3].min() == 1 and y[3:].max() == 0
    assert pad_rows(x, 3) is x


# ---- parity ---------------------------------------------------------------------------------------
def test_onnxruntime_fp32_matches_pytorch(onnx_dynamic, reference):
    x, ref = reference
    with load(onnx_dynamic) as rt:
        assert rt.backend.name == "onnxruntime" and rt.info()["batch"] == "any batch"
        out = rt.infer(x)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert rel_l2(out, ref) <= 1e-5


@pytest.mark.parametrize("n", [1, 3, 4, 9])
def test_static_batch_graph_chunks_and_pads(onnx_b4, reference, n):
    x, ref = reference
    rt = load(onnx_b4)
    assert rt.backend.limits == BatchLimits(static=4)
    out = rt.infer(x[:n])
    assert out.shape == (n, 10)
    assert rel_l2(out, ref[:n]) <= 1e-5


def test_torch_backend_and_chunk_option(reference):
    x, ref = reference
    rt = load("demo", chunk=2)
    assert rt.backend.name == "torch" and rt.class_names[0] == "circle"
    np.testing.assert_allclose(rt.infer(x), ref, rtol=0, atol=1e-5)


def test_torch_tensors_in_torch_tensors_out(onnx_b4, reference):
    import torch

    x, ref = reference
    for rt in (load(onnx_b4), load("demo")):
        out = rt.infer(torch.from_numpy(x[:5]))
        assert isinstance(out, torch.Tensor) and out.shape == (5, 10)
        assert rel_l2(out.numpy(), ref[:5]) <= 1e-5


def test_variant_name_gives_random_weights():
    rt = load("psvit_micro", seed=3)
    assert rt.backend.metadata["random_weights"] is True
    assert rt.infer(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, rt.backend.model.cfg.num_classes)


# ---- predict ----------------------------------------------------------------------------------------
def test_predict_applies_the_recorded_preprocessing(onnx_dynamic, tmp_path):
    from PIL import Image

    from psvit.data.synthetic import generate_synthetic
    from psvit.preprocessing import Preprocess

    data = generate_synthetic(8000, 0, 32, indices=range(6))
    Image.fromarray(data.images[0]).save(tmp_path / "a.png")
    rt = load(onnx_dynamic)
    inputs = [tmp_path / "a.png", Image.fromarray(data.images[1]), *data.images[2:]]
    preds = rt.predict(inputs, topk=3)
    assert len(preds) == 6 and all(len(p) == 3 for p in preds)
    logits = rt.infer(Preprocess.from_dict(rt.backend.preprocess).batch(list(data.images)))
    for row, top in zip(logits, preds):
        assert top[0].index == int(row.argmax())
        assert top[0].name == rt.class_names[top[0].index]
        assert top[0].probability >= top[1].probability >= top[2].probability > 0
    single = rt.predict(data.images[0], topk=1)  # one HWC array = one image
    assert len(single) == 1 and single[0][0].index == preds[0][0].index


def test_predict_refuses_bad_images(onnx_dynamic):
    rt = load(onnx_dynamic)
    with pytest.raises(PSViTError, match="uint8"):
        rt.predict(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(RuntimeInputError, match="topk"):
        rt.predict(np.zeros((32, 32, 3), np.uint8), topk=0)


# ---- wrong inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, message", [
    (np.zeros((3, 32, 32), np.float32), r"3-D input .* add the batch axis"),
    (np.zeros((2, 3, 32, 32), np.uint8), r"got dtype uint8; preprocess"),
    (np.zeros((2, 1, 32, 32), np.float32), r"got 1 channels"),
    (np.zeros((2, 32, 32, 3), np.float32), r"channels-last"),
    (np.zeros((2, 3, 16, 16), np.float32), r"images of 16x16; resize them to 32x32"),
    (np.zeros((0, 3, 32, 32), np.float32), r"empty"),
])
def test_wrong_inputs_say_what_was_expected(onnx_dynamic, bad, message):
    import torch

    rt = load(onnx_dynamic)
    with pytest.raises(RuntimeInputError, match=message) as exc:
        rt.infer(bad)
    assert "expects float32 (N, 3, 32, 32)" in str(exc.value) or "empty" in str(exc.value)
    with pytest.raises(RuntimeInputError, match=message):
        rt.infer(torch.from_numpy(bad))


# ---- corrupt artifacts and wrong options ------------------------------------------------------------
def test_truncated_onnx_is_a_clear_error(onnx_dynamic, tmp_path):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(onnx_dynamic.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="truncated or not an ONNX model"):
        load(bad)
    with pytest.raises(ArtifactError, match="does not exist"):
        load(tmp_path / "missing.onnx")


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    src = psvit.checkpoint.demo_checkpoint_path().read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        load(bad)


def test_garbage_engine_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.engine"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(PSViTError, match="no sidecar"):
        load(bad)
    (tmp_path / "model.engine.json").write_text("{not json")
    with pytest.raises(PSViTError, match="corrupt"):
        load(bad)


def test_unknown_artifacts_and_mismatched_backends(onnx_dynamic, tmp_path):
    with pytest.raises(ArtifactError, match="cannot tell what"):
        load(tmp_path / "weights.xyz")
    with pytest.raises(BackendError, match="onnxruntime backend, not torch"):
        load(onnx_dynamic, backend="torch")
    with pytest.raises(BackendError, match="unknown backend"):
        load(onnx_dynamic, backend="tvm")
    with pytest.raises(BackendError, match="cuda_graphs"):
        load(onnx_dynamic, cuda_graphs=True)
    with pytest.raises(BackendError, match="need a CUDA device"):
        load("demo", cuda_graphs=True)


def test_missing_gpu_provider_names_the_pip_package(onnx_dynamic):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime-gpu"):
        load(onnx_dynamic, device="cuda")


def test_missing_tensorrt_names_the_pip_package():
    from psvit.runtime.tensorrt import import_tensorrt

    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError, match="pip install tensorrt"):
        import_tensorrt("tensorrt")


# ---- thread safety -----------------------------------------------------------------------------------
def _hammer(rt, inputs: list[np.ndarray], threads: int = 6) -> list[np.ndarray | None]:
    results: list[np.ndarray | None] = [None] * len(inputs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads, timeout=60)

    def work(k: int) -> None:
        try:
            barrier.wait()
            for i in range(k, len(inputs), threads):
                results[i] = rt.infer(inputs[i])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in pool), "a thread did not finish within 120 s"
    assert not errors, errors
    return results


@pytest.mark.parametrize("which", ["onnx_dynamic", "onnx_b4", "demo"])
def test_concurrent_threads_get_their_own_results(which, request):
    rt = load("demo") if which == "demo" else load(request.getfixturevalue(which))
    inputs = [RNG.standard_normal((1 + i % 5, 3, 32, 32), dtype=np.float32) for i in range(24)]
    expected = [rt.infer(x) for x in inputs]
    got = _hammer(rt, inputs)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


# ---- GPU / TensorRT (run where they exist) ---------------------------------------------------------------
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (PyTorch sees none)")
def test_torch_cuda_graphs_match_eager(reference):
    x, ref = reference
    rt = load("demo", device="cuda", cuda_graphs=True)
    out = rt.infer(x)
    assert rel_l2(out, ref) <= 1e-4  # TF32/cuBLAS vs CPU
    np.testing.assert_array_equal(rt.infer(x), out)  # replay of the captured graph


@pytest.mark.gpu
def test_onnxruntime_cuda_io_binding(onnx_b4, reference):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with the CUDA provider")
    x, ref = reference
    rt = load(onnx_b4, device="cuda")
    timings: dict[str, float] = {}
    assert rel_l2(rt.infer(x, timings), ref) <= 1e-4
    assert set(timings) == {"h2d", "compute", "d2h"}


@pytest.mark.trt
def test_engine_with_a_valid_sidecar_needs_a_gpu(tmp_path):
    """Sidecar read and checked, TensorRT-RTX imported; without a GPU the load stops with a clear error."""
    pytest.importorskip("tensorrt_rtx", reason="builds the engine (pip install tensorrt-rtx)")
    import torch

    from psvit.export import build_engine_file, export_onnx

    onnx_path = tmp_path / "demo.fp16.onnx"
    export_onnx("demo", onnx_path, fp16=True, count=2)
    engine = tmp_path / "demo.fp16.engine"
    build_engine_file(onnx_path, engine, builder="tensorrt_rtx", optimization_level=0)
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the engine would load (covered by GPU runs)")
    with pytest.raises(BackendError, match="runs on an NVIDIA GPU"):
        load(engine)
    engine.write_bytes(engine.read_bytes()[:-100])  # truncated plan: the sidecar's sha256 no longer matches
    with pytest.raises(PSViTError, match="not the plan its sidecar describes"):
        load(engine)


@pytest.mark.trt
@pytest.mark.gpu
def test_tensorrt_engine_runs_and_chunks(tmp_path, reference):
    """Where a TensorRT and a GPU exist: a profile-limited engine over odd batch sizes from two threads,
    per-layer times, the concurrency contract of a context pool, and the same engine without its sidecar."""
    import importlib.util

    from psvit import pipeline

    if not _cuda():
        pytest.skip("needs a CUDA GPU (PyTorch sees none)")
    if importlib.util.find_spec("tensorrt") is None and importlib.util.find_spec("tensorrt_rtx") is None:
        pytest.skip("needs TensorRT or TensorRT-RTX (pip install tensorrt / tensorrt-rtx)")
    x, ref = reference
    engine = tmp_path / "demo.engine"
    pipeline.engine("demo", engine, batch="1:2:4", force=True)
    try:
        rt = load(engine, profiling=True, contexts=2)
    except ArtifactError as exc:  # built for this GPU, but this TensorRT cannot run it here
        assert "cannot deserialize" in str(exc)
        pytest.skip(f"the engine was built; this TensorRT cannot run it on this GPU: {str(exc).splitlines()[0]}")
    assert rt.backend.limits == BatchLimits(min_batch=1, max_batch=4)
    assert rt.info()["concurrency"] == {"thread_safe": True, "max_parallel": 2, "mechanism": "context-pool"}
    for n in (1, 3, 9):
        assert rel_l2(rt.infer(x[:n]), ref[:n]) <= 1e-3  # TF32 tactics
    got = _hammer(rt, [x[: 1 + i % 5] for i in range(12)], threads=3)
    for i, g in enumerate(got):
        assert rel_l2(g, ref[: 1 + i % 5]) <= 1e-3
    assert rt.layer_profile()
    import torch

    out = rt.infer(torch.from_numpy(x[:3]).cuda())
    assert out.device.type == "cuda" and rel_l2(out.cpu().numpy(), ref[:3]) <= 1e-3
    engine.with_name(engine.name + ".json").unlink()  # as trtexec or Triton holds it
    from psvit.runtime.tensorrt import ProvenanceWarning

    with pytest.warns(ProvenanceWarning, match="provenance .* is unknown"):
        bare = load(engine)
    assert bare.backend.metadata["provenance"].startswith("unknown") and bare.backend.limits == rt.backend.limits
    assert bare.backend.precision == "fp32" and rel_l2(bare.infer(x[:2]), ref[:2]) <= 1e-3


def test_info_reports_the_graphs_precision_not_the_metadata(demo_fp32_onnx, tmp_path):
    """A graph whose metadata claims FP16 is reported as what it computes in (FP32), from the file and from
    bytes in memory."""
    import shutil

    from psvit.export.metadata import update_metadata_file

    lying = tmp_path / "lying.onnx"
    shutil.copy(demo_fp32_onnx, lying)
    update_metadata_file(lying, {"psvit.precision": "fp16"})
    assert load(lying).info()["precision"] == "fp32"
    assert load(lying.read_bytes()).backend.precision == "fp32"
