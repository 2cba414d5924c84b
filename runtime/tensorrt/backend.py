"""TensorRT / TensorRT-RTX backend: one deserialised engine, a pool of execution contexts over it.

Loading goes through :func:`psvit.runtime.tensorrt.engine.load_engine` (sidecar checks, or I/O read from
the engine). Device memory comes from PyTorch (CUDA tensors), so no CUDA Python binding is needed.

Service rules: ``contexts`` execution contexts share the engine's weights (one deserialised engine), each
with its own CUDA stream, device buffers allocated once at the profile's max batch (a static engine: its
batch) and pinned host buffers, so up to ``contexts`` calls run at once (``Runtime.info()["concurrency"]``).
The device and stream rules (``cuda:N``, waiting on the caller's stream, ``record_stream``) are those of
:class:`psvit.runtime.tensorrt.pool.ExecutionPool`, which is tested on any CUDA GPU without TensorRT.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.base import Backend, Concurrency, Outputs, Timings
from ..batching import BatchLimits
from ..errors import ArtifactError, BackendError
from .engine import LoadedEngine, load_engine
from .pool import ExecutionPool
from .sidecar import EngineSidecar

DEFAULT_CONTEXTS = 1


class _LayerProfiler:
    """Accumulates TensorRT's per-layer times (IProfiler.report_layer_time) across runs and contexts."""

    def __init__(self, trt: Any) -> None:
        parent = self

        class Profiler(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                with parent.lock:
                    parent.totals[layer_name] = parent.totals.get(layer_name, 0.0) + ms
                    parent.calls[layer_name] = parent.calls.get(layer_name, 0) + 1

        self.lock = threading.Lock()
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.profiler = Profiler()

    def summary(self, runs: int) -> dict[str, dict[str, float]]:
        from ..ort_profile import per_run_totals

        with self.lock:
            return per_run_totals(dict(self.totals), dict(self.calls), runs)


class ContextExecutor:
    """A TensorRT execution context as an :class:`psvit.runtime.tensorrt.pool.Executor`."""

    def __init__(self, loaded: LoadedEngine, profiler: _LayerProfiler | None) -> None:
        self.context = loaded.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"{loaded.label}: TensorRT could not create an execution context (out of GPU memory?)")
        if profiler is not None:
            self.context.profiler = profiler.profiler
        self.label = loaded.label
        self.input = loaded.inputs[0]
        self.outputs = [t.name for t in loaded.outputs]

    def bind(self, buffers: dict[str, Any]) -> None:
        for name, buffer in buffers.items():
            self.context.set_tensor_address(name, buffer.data_ptr())

    def shapes(self, n: int) -> dict[str, tuple[int, ...]]:
        shape = (n, *self.input.shape[1:])
        self.context.set_input_shape(self.input.name, shape)
        return {self.input.name: shape, **{o: tuple(int(d) for d in self.context.get_tensor_shape(o))
                                           for o in self.outputs}}

    def execute(self, stream: Any) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendError(f"TensorRT execute_async_v3 failed on {self.label}; see the log of logger "
                               f"'psvit.tensorrt'")


class TensorRTBackend(Backend):
    """A serialized engine on one GPU; input shapes within its optimization profile 0.

    Args:
        source: an engine file (its ``.engine.json`` sidecar is read and checked when present) or plan bytes.
        device: ``cuda`` or ``cuda:N`` (default: the first GPU).
        contexts: execution contexts in the pool, i.e. calls that run at once (each holds its own activation
            memory and buffers; the weights are shared).
        profiling: collect per-layer times (:meth:`layer_profile`).
        sidecar: the sidecar of plan bytes (the builder's post-build check); files read their own.
    """

    name = "tensorrt"

    def __init__(
        self,
        source: str | os.PathLike | bytes,
        *,
        device: str | None = None,
        contexts: int = DEFAULT_CONTEXTS,
        profiling: bool = False,
        sidecar: EngineSidecar | None = None,
    ) -> None:
        if contexts < 1:
            raise BackendError(f"contexts must be at least 1, got {contexts}")
        self.loaded = loaded = load_engine(source, device=device, sidecar=sidecar)
        import torch

        if len(loaded.inputs) != 1 or not loaded.outputs:
            raise ArtifactError(f"{loaded.label} is not an image classifier engine (inputs "
                                f"{[t.name for t in loaded.inputs]}, outputs {[t.name for t in loaded.outputs]})")
        inp = loaded.inputs[0]
        self.input_name = inp.name
        self.output_names = [t.name for t in loaded.outputs]
        self.input_shape = tuple(int(d) for d in inp.shape[1:])  # type: ignore[assignment]
        batch = loaded.batch_range
        self.limits = (BatchLimits(static=int(inp.shape[0])) if batch is None
                       else BatchLimits(min_batch=batch[0], max_batch=batch[1]))
        max_batch = self.limits.static or self.limits.max_batch
        self.input_dtype = np.dtype(inp.dtype)
        self.torch_device = torch.device(loaded.device.torch_device)
        self._profiler = _LayerProfiler(loaded.trt) if profiling else None
        with torch.cuda.device(self.torch_device):  # contexts and buffers on the engine's GPU
            executors = [ContextExecutor(loaded, self._profiler) for _ in range(contexts)]
            max_shapes = executors[0].shapes(max_batch)
            self.pool = ExecutionPool(self.torch_device, executors, self.input_name, self.output_names, max_shapes,
                                      {t.name: getattr(torch, t.dtype) for t in (*loaded.inputs, *loaded.outputs)})
        sc = loaded.sidecar
        self.device = str(self.torch_device)
        self.precision = loaded.precision
        self.class_names = sc.class_names if sc else None
        self.preprocess = sc.preprocess if sc else None
        self.metadata = {"flavour": loaded.flavour, "version": loaded.trt.__version__,
                         "provenance": "sidecar" if sc else "unknown (no sidecar)", "warnings": loaded.warnings,
                         "profile": loaded.profile}
        label = loaded.label if isinstance(source, (bytes, bytearray)) else Path(source).name
        self.description = f"{label} ({loaded.flavour} {loaded.trt.__version__} {loaded.device.name})"
        self.concurrency = Concurrency(thread_safe=True, max_parallel=contexts, mechanism="context-pool")

    def _check_rows(self, n: int) -> None:
        lo, hi = ((self.limits.static, self.limits.static) if self.limits.static
                  else (self.limits.min_batch, self.limits.max_batch))
        if not lo <= n <= hi:
            raise BackendError(f"{self.description} runs batches of {lo}..{hi} rows, got {n} "
                               f"(Runtime.infer splits and pads batches; call it instead)")

    def run(self, x: np.ndarray, timings: Timings | None = None) -> Outputs:
        self._check_rows(len(x))
        return self.pool.run(x, timings)

    def run_tensor(self, x: Any) -> Any:
        self._check_rows(len(x))
        return self.pool.run_tensor(x)

    def layer_profile(self) -> dict[str, dict[str, float]] | None:
        return None if self._profiler is None else self._profiler.summary(self.pool.runs)

    def close(self) -> None:
        self.pool.close()
