"""TensorRT / TensorRT-RTX backend: a raw engine plan plus its ``.engine.json`` sidecar.

Loading reads the sidecar (:func:`psvit.export.engine.read_sidecar`) and refuses an engine built for
another TensorRT flavour/version or GPU (:func:`psvit.export.engine.check_sidecar`). Device memory comes
from PyTorch (CUDA tensors), so no CUDA Python binding is needed.

Thread safety: one execution context and one CUDA stream per Runtime, guarded by a lock (a context holds
its input shapes and tensor addresses). Load several Runtimes for concurrent GPU streams.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import MissingDependencyError
from ..batching import BatchLimits
from ..errors import ArtifactError, BackendError
from .base import Backend, Timings, timed

_PIP = {"tensorrt": "pip install tensorrt", "tensorrt_rtx": "pip install tensorrt-rtx"}


def _import_trt(flavour: str) -> Any:
    import importlib

    if flavour not in _PIP:
        raise ArtifactError(f"the engine sidecar names an unknown TensorRT flavour {flavour!r}")
    try:
        return importlib.import_module(flavour)
    except ImportError as exc:
        raise MissingDependencyError(
            f"this engine was built with {flavour}; install it to run the engine: {_PIP[flavour]}"
        ) from exc


def _sidecar_api() -> tuple[Any, Any]:
    """(read_sidecar, check_sidecar): from psvit.export.engine, or the sidecar module it builds on."""
    try:
        from psvit.export.engine import check_sidecar, read_sidecar
    except ImportError:
        try:
            from psvit.export.sidecar import check_sidecar, read_sidecar
        except ImportError as exc:
            raise BackendError(
                f"running engines needs psvit.export's sidecar support, which this installation lacks ({exc}); "
                f"pip install 'psvit-deploy[onnx]'"
            ) from exc
    return read_sidecar, check_sidecar


class _LayerProfiler:
    """Accumulates TensorRT's per-layer times (IProfiler.report_layer_time) across runs."""

    def __init__(self, trt: Any) -> None:
        parent = self

        class Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                parent.totals[layer_name] = parent.totals.get(layer_name, 0.0) + ms
                parent.calls[layer_name] = parent.calls.get(layer_name, 0) + 1

        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.profiler = Profiler()

    def summary(self, runs: int) -> dict[str, dict[str, float]]:
        from ..ort_profile import per_run_totals

        return per_run_totals(self.totals, self.calls, runs)


class TensorRTBackend(Backend):
    """A serialized engine on one GPU; input shapes within its optimization profile 0."""

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, *, device: str | None = None, profiling: bool = False) -> None:
        import torch

        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"engine file {path} does not exist; check the path, or build one with "
                                f"`psvit-export trt`")
        read_sidecar, check_sidecar = _sidecar_api()
        sidecar = read_sidecar(path)  # EngineMismatchError (a PSViTError) when missing, corrupt or stale
        trt = _import_trt(sidecar.flavour)
        if not torch.cuda.is_available():
            raise BackendError(f"{path.name} is a TensorRT engine: it runs on an NVIDIA GPU, and none is visible")
        dev = torch.device(device or "cuda:0")
        props = torch.cuda.get_device_properties(dev)
        check_sidecar(sidecar, flavour=sidecar.flavour, version=trt.__version__, device_name=props.name,
                      compute_capability=f"{props.major}.{props.minor}")
        from psvit.export.trt_build import _logger

        self.trt = trt
        self.runtime = trt.Runtime(_logger(trt, sidecar.flavour))
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{sidecar.flavour} {trt.__version__} cannot deserialize {path}: the plan is "
                                f"truncated or corrupt; rebuild it with `psvit-export trt`")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or not outs:
            raise ArtifactError(f"{path} is not an image classifier engine (inputs {ins}, outputs {outs})")
        self.input_name, self.output_name = ins[0], outs[0]
        shape = list(self.engine.get_tensor_shape(self.input_name))
        self.input_shape = tuple(int(d) for d in shape[1:])  # type: ignore[assignment]
        if shape[0] >= 0:
            self.limits = BatchLimits(static=int(shape[0]))
        else:
            lo, _opt, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.limits = BatchLimits(min_batch=int(lo[0]), max_batch=int(hi[0]))
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self.context = self.engine.create_execution_context()
        self._profiler = _LayerProfiler(trt) if profiling else None
        if self._profiler is not None:
            self.context.profiler = self._profiler.profiler
        self.torch_device = dev
        self.device = str(dev)
        self.stream = torch.cuda.Stream(dev)
        self.precision = str(getattr(sidecar, "precision", "?"))
        self.class_names = getattr(sidecar, "class_names", None)
        self.preprocess = getattr(sidecar, "preprocess", None)
        self.metadata = {"flavour": sidecar.flavour, "version": trt.__version__}
        self.description = f"{path.name} ({sidecar.flavour} {trt.__version__} {props.name})"
        self.thread_safety = "calls are serialised by a lock (one execution context, one CUDA stream)"
        self._lock = threading.Lock()
        self._buffers: dict[int, tuple[Any, Any]] = {}  # batch -> (input, output) device tensors
        self._runs = 0

    def _buffers_for(self, n: int) -> tuple[Any, Any]:
        import torch

        if n not in self._buffers:
            to_torch = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}
            self.context.set_input_shape(self.input_name, (n, *self.input_shape))
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            x = torch.empty((n, *self.input_shape), dtype=to_torch[self.input_dtype], device=self.torch_device)
            y = torch.empty(out_shape, dtype=to_torch[self.output_dtype], device=self.torch_device)
            self._buffers[n] = (x, y)
        return self._buffers[n]

    def _execute(self, x_dev: Any, y_dev: Any) -> None:
        self.context.set_input_shape(self.input_name, tuple(x_dev.shape))
        self.context.set_tensor_address(self.input_name, x_dev.data_ptr())
        self.context.set_tensor_address(self.output_name, y_dev.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError("TensorRT execute_async_v3 failed; see the TensorRT log above")

    def run(self, x: np.ndarray, timings: Timings | None = None) -> np.ndarray:
        import torch

        with self._lock, torch.cuda.stream(self.stream):
            self._runs += 1
            x_dev, y_dev = self._buffers_for(len(x))
            host = torch.from_numpy(np.ascontiguousarray(x, dtype=self.input_dtype))
            timed(timings, "h2d", lambda: x_dev.copy_(host), self.stream.synchronize)
            timed(timings, "compute", lambda: self._execute(x_dev, y_dev), self.stream.synchronize)
            out = timed(timings, "d2h", lambda: y_dev.float().cpu(), self.stream.synchronize)
            return out.numpy()

    def run_tensor(self, x: Any) -> Any:
        import torch

        with self._lock, torch.cuda.stream(self.stream):
            self._runs += 1
            x_dev, y_dev = self._buffers_for(len(x))
            x_dev.copy_(x)
            self._execute(x_dev, y_dev)
            out = y_dev.float().clone()
            self.stream.synchronize()
            return out.to(x.device)

    def layer_profile(self) -> dict[str, dict[str, float]] | None:
        return None if self._profiler is None else self._profiler.summary(self._runs)

    def close(self) -> None:
        self._buffers.clear()
        self.context = None
