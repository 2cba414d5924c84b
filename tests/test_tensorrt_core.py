"""The runtime's TensorRT core without a GPU (logging, device probe, sidecar-less and corrupt engines) and
its device/stream rules on any CUDA GPU through PyTorch (:class:`ExecutionPool` with PyTorch executors in
place of TensorRT contexts: the same code the TensorRT backend runs)."""
from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from psvit.errors import ArtifactError
from psvit.runtime import BackendError, EngineMismatchError, load
from psvit.runtime.tensorrt import capture, cuda_devices, resolve_device, trt_logger
from psvit.runtime.tensorrt.logger import CAPTURE_LIMIT

RTX = "TensorRT-RTX builds engines on CPU: pip install tensorrt-rtx"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


# ---- TensorRT's log -------------------------------------------------------------------------------------
def test_log_goes_to_logging_and_to_bounded_per_thread_captures(caplog):
    trt = pytest.importorskip("tensorrt_rtx", reason=RTX)
    logger = trt_logger(trt, "tensorrt_rtx")
    assert trt_logger(trt, "tensorrt_rtx") is logger  # one per module: TensorRT keeps the first
    warning, info = trt.ILogger.Severity.WARNING, trt.ILogger.Severity.INFO
    seen: dict[str, list[str]] = {}
    barrier = threading.Barrier(2)

    def build(name: str) -> None:
        with capture() as log:
            barrier.wait(timeout=10)
            for i in range(CAPTURE_LIMIT + 5):
                logger.log(warning, f"{name} {i}")
            logger.log(info, f"{name} info")  # INFO goes to logging only
            barrier.wait(timeout=10)  # the other build is still running: nothing it logs lands here
            seen[name] = log.messages

    with caplog.at_level(logging.DEBUG, logger="psvit.tensorrt"):
        threads = [threading.Thread(target=build, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    for name in ("a", "b"):
        assert len(seen[name]) == CAPTURE_LIMIT  # bounded: the last ones are kept
        assert seen[name][-1] == f"WARNING: {name} {CAPTURE_LIMIT + 4}" and all(name in m for m in seen[name])
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels["WARNING: a 0"] == logging.WARNING and levels["INFO: b info"] == logging.INFO


def test_messages_from_tensorrt_threads_reach_the_open_captures():
    trt = pytest.importorskip("tensorrt_rtx", reason=RTX)
    logger = trt_logger(trt, "tensorrt_rtx")
    with capture() as log:
        worker = threading.Thread(target=logger.log, args=(trt.ILogger.Severity.ERROR, "from a builder thread"))
        worker.start()
        worker.join(timeout=10)
    assert log.messages == ["ERROR: from a builder thread"]
    with capture() as later:
        pass
    assert later.messages == []  # nothing left over from earlier builds


# ---- devices --------------------------------------------------------------------------------------------
def test_device_probe_agrees_with_pytorch():
    devices = cuda_devices()
    if not _cuda():
        assert devices == [] and resolve_device("cuda:0") is None
    else:
        import torch

        assert [(d.name, d.compute_capability) for d in devices] == [
            (torch.cuda.get_device_name(i), "%d.%d" % torch.cuda.get_device_capability(i))
            for i in range(torch.cuda.device_count())]
        with pytest.raises(BackendError, match="does not exist"):
            resolve_device(f"cuda:{len(devices)}")
    with pytest.raises(BackendError, match="use device='cuda' or 'cuda:N'"):
        resolve_device("cpu")


# ---- engines that cannot be used -----------------------------------------------------------------------
def test_engines_without_a_sidecar(tmp_path):
    garbage = tmp_path / "g.engine"
    garbage.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ArtifactError, match="has no sidecar g.engine.json and its content is not a TensorRT plan"):
        load(garbage)
    pytest.importorskip("tensorrt_rtx", reason=RTX)
    from test_trt_build import attention_graph

    from psvit.export import build_engine

    plan = tmp_path / "trtexec.plan"  # a plan as trtexec or a Triton repository holds it: no sidecar
    build_engine(attention_graph(tmp_path / "a.onnx"), builder="tensorrt_rtx", optimization_level=0).save(plan)
    if _cuda():
        pytest.skip("a GPU is present: the sidecar-less engine loads or is refused by TensorRT-RTX there")
    with pytest.raises(BackendError, match="runs on an NVIDIA GPU, and none is visible"):
        load(plan)  # recognised and read as a plan (no 'no sidecar' refusal): only the GPU is missing


def test_a_corrupt_sidecar_is_an_artifact_error(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"vtrt" + bytes(10))
    (tmp_path / "m.engine.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt") as info:
        load(engine)
    assert isinstance(info.value, EngineMismatchError)


# ---- the device/stream rules on a GPU (PyTorch executors stand in for TensorRT contexts) -------------
class TorchExecutor:
    """An 'engine' computing y = x.sum over (H, W) * scale, slowly enough to race if streams were wrong."""

    def __init__(self, scale: float, spin: int = 0) -> None:
        self.scale, self.spin, self.n, self.buffers = scale, spin, 0, {}
        self.devices: set[int] = set()

    def bind(self, buffers):
        self.buffers = buffers

    def shapes(self, n):
        self.n = n
        return {"x": (n, 3, 8, 8), "y": (n, 3)}

    def execute(self, stream):
        import torch

        self.devices.add(torch.cuda.current_device())
        assert torch.cuda.current_stream() == stream, "the pool runs executors on the slot's stream"
        if self.spin:
            torch.cuda._sleep(self.spin)
        x = self.buffers["x"][: self.n * 192].view(self.n, 3, 8, 8)
        self.buffers["y"][: self.n * 3].view(self.n, 3).copy_(x.sum(dim=(2, 3)) * self.scale)


def make_pool(device: str, slots: int = 2, spin: int = 0):
    import torch

    from psvit.runtime.tensorrt.pool import ExecutionPool

    executors = [TorchExecutor(2.0, spin) for _ in range(slots)]
    pool = ExecutionPool(torch.device(device), executors, "x", ["y"], {"x": (16, 3, 8, 8), "y": (16, 3)},
                         {"x": torch.float16, "y": torch.float32})
    return pool, executors


def expected(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32).sum(axis=(2, 3)) * 2.0


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (PyTorch sees none)")
def test_pool_host_path_pinned_buffers_allocated_once():
    pool, _ = make_pool("cuda:0")
    slot = pool.slots[0]
    assert all(b.is_pinned() for b in slot.host.values())
    ptrs = {n: b.data_ptr() for n, b in slot.device.items()}
    for n in (1, 16, 5):
        x = np.random.default_rng(n).standard_normal((n, 3, 8, 8), dtype=np.float32)
        timings: dict[str, float] = {}
        np.testing.assert_allclose(pool.run(x, timings), expected(x), rtol=1e-3, atol=1e-2)
        assert set(timings) == {"h2d", "compute", "d2h"}
    assert {n: b.data_ptr() for n, b in slot.device.items()} == ptrs


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (PyTorch sees none)")
def test_pool_waits_for_the_callers_stream_and_orders_its_outputs():
    import torch

    pool, _ = make_pool("cuda:0", spin=0)
    caller = torch.cuda.Stream()
    results = []
    with torch.cuda.stream(caller):
        for n in (3, 9, 16):
            x = torch.zeros((n, 3, 8, 8), device="cuda")
            torch.cuda._sleep(50_000_000)  # the caller's stream is busy for a while before x is written
            x.fill_(1.0)
            y = pool.run_tensor(x)  # must wait for the fill on the caller's stream
            del x  # freed at once: record_stream keeps its memory until the pool's copy has run
            results.append((n, y * 1))  # read on the caller's stream: ordered after the pool's work
    torch.cuda.synchronize()
    for n, y in results:
        assert y.device.type == "cuda" and torch.equal(y, torch.full((n, 3), 128.0, device="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (PyTorch sees none)")
def test_pool_runs_on_its_own_device_and_serves_threads():
    import torch

    device = f"cuda:{torch.cuda.device_count() - 1}"  # the last GPU: cuda:N where there are several
    pool, executors = make_pool(device, slots=2, spin=2_000_000)
    inputs = [np.random.default_rng(i).standard_normal((1 + i % 7, 3, 8, 8), dtype=np.float32) for i in range(24)]
    got: list = [None] * len(inputs)
    errors: list = []

    def work(k: int) -> None:
        try:
            with torch.cuda.device(0):  # the caller's current device is another one (where there are several)
                for i in range(k, len(inputs), 4):
                    got[i] = pool.run(inputs[i]) if i % 2 else pool.run_tensor(torch.from_numpy(inputs[i])).numpy()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for x, y in zip(inputs, got):
        np.testing.assert_allclose(y, expected(x), rtol=1e-3, atol=1e-2)
    assert {d for e in executors for d in e.devices} == {torch.device(device).index}
    assert pool.runs == len(inputs)
