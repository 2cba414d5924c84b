"""TensorRT / TensorRT-RTX backend: one deserialised engine, a pool of execution contexts over it.

Loading goes through :func:`psvit.runtime.tensorrt.engine.load_engine` (sidecar checks, or I/O read from
the engine). Device memory comes from PyTorch (CUDA tensors), so no CUDA Python binding is needed.

Service rules:

- **Concurrency**: ``contexts`` execution contexts share the engine's weights (one deserialised engine);
  each has its own CUDA stream, device buffers and pinned host buffers, so up to ``contexts`` calls run at
  once and further callers wait for a free context (``Runtime.info()["concurrency"]``).
- **Buffers** are allocated once per context at the profile's max batch (a static engine: its batch); a
  smaller batch uses the leading rows, so no call allocates device memory and tensor addresses never change.
- **Devices**: everything (deserialisation, contexts, buffers, execution) happens under the engine's GPU
  (``cuda:N``), whatever the caller's current device is.
- **Streams** (:meth:`TensorRTBackend.run_tensor`): the context's stream first waits for the caller's current
  stream (the input may still be being written there), the input is marked used on the context's stream
  (``record_stream``), and the caller's stream waits for the context's stream before it reads the outputs,
  which are in turn marked used on the caller's stream. Nothing blocks the host.
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.base import Backend, Concurrency, Outputs, Timings, timed
from ..batching import BatchLimits
from ..errors import ArtifactError, BackendError
from .engine import LoadedEngine, load_engine
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


class _Slot:
    """One execution context with its stream, device buffers (max batch) and pinned host buffers."""

    def __init__(self, loaded: LoadedEngine, torch: Any, max_shapes: dict[str, tuple[int, ...]],
                 dtypes: dict[str, Any], profiler: _LayerProfiler | None) -> None:
        dev = torch.device(loaded.device.torch_device)
        self.context = loaded.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"{loaded.label}: TensorRT could not create an execution context (out of GPU memory?)")
        if profiler is not None:
            self.context.profiler = profiler.profiler
        self.stream = torch.cuda.Stream(dev)
        self.device: dict[str, Any] = {}
        self.host: dict[str, Any] = {}
        for name, shape in max_shapes.items():
            numel = int(np.prod(shape))
            self.device[name] = torch.empty(numel, dtype=dtypes[name], device=dev)  # flat: views per batch
            self.host[name] = torch.empty(numel, dtype=dtypes[name], pin_memory=True)
            self.context.set_tensor_address(name, self.device[name].data_ptr())


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

        self._torch = torch
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
        self.max_batch = self.limits.static or self.limits.max_batch
        dtypes = {t.name: getattr(torch, t.dtype) for t in (*loaded.inputs, *loaded.outputs)}
        self.input_dtype = np.dtype(inp.dtype)
        self.torch_device = torch.device(loaded.device.torch_device)
        self._profiler = _LayerProfiler(loaded.trt) if profiling else None
        with torch.cuda.device(self.torch_device):
            probe = loaded.engine.create_execution_context()  # output shapes at the max batch
            probe.set_input_shape(self.input_name, (self.max_batch, *self.input_shape))
            max_shapes = {self.input_name: (self.max_batch, *self.input_shape)}
            max_shapes.update({n: tuple(int(d) for d in probe.get_tensor_shape(n)) for n in self.output_names})
            del probe
            self._slots: queue.Queue[_Slot] = queue.Queue()
            for _ in range(contexts):
                self._slots.put(_Slot(loaded, torch, max_shapes, dtypes, self._profiler))
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
        self._runs = 0
        self._runs_lock = threading.Lock()

    # ---- the pool ---------------------------------------------------------------------------------------
    @contextmanager
    def _slot(self) -> Iterator[_Slot]:
        slot = self._slots.get()  # waits while every context is busy
        try:
            with self._runs_lock:
                self._runs += 1
            yield slot
        finally:
            self._slots.put(slot)

    def _views(self, slot: _Slot, buffers: dict[str, Any], n: int) -> dict[str, Any]:
        """Buffers viewed at batch ``n`` (the leading elements of the max-batch buffers)."""
        slot.context.set_input_shape(self.input_name, (n, *self.input_shape))
        views = {self.input_name: buffers[self.input_name][: n * int(np.prod(self.input_shape))]
                 .view(n, *self.input_shape)}
        for name in self.output_names:
            shape = tuple(int(d) for d in slot.context.get_tensor_shape(name))
            views[name] = buffers[name][: int(np.prod(shape))].view(shape)
        return views

    def _execute(self, slot: _Slot) -> None:
        if not slot.context.execute_async_v3(slot.stream.cuda_stream):
            raise BackendError(f"TensorRT execute_async_v3 failed on {self.description}; see the log of "
                               f"logger 'psvit.tensorrt'")

    def _check_rows(self, n: int) -> None:
        lo, hi = (self.limits.static, self.limits.static) if self.limits.static else \
            (self.limits.min_batch, self.limits.max_batch)
        if not lo <= n <= hi:
            raise BackendError(f"{self.description} runs batches of {lo}..{hi} rows, got {n} "
                               f"(Runtime.infer splits and pads batches; call it instead)")

    # ---- Backend ----------------------------------------------------------------------------------------
    def run(self, x: np.ndarray, timings: Timings | None = None) -> Outputs:
        torch = self._torch
        n = len(x)
        self._check_rows(n)
        with self._slot() as slot, torch.cuda.device(self.torch_device), torch.cuda.stream(slot.stream):
            dev, host = self._views(slot, slot.device, n), self._views(slot, slot.host, n)
            host[self.input_name].copy_(torch.from_numpy(np.ascontiguousarray(x, dtype=self.input_dtype)))
            sync = slot.stream.synchronize
            timed(timings, "h2d", lambda: dev[self.input_name].copy_(host[self.input_name], non_blocking=True), sync)
            timed(timings, "compute", lambda: self._execute(slot), sync)

            def d2h() -> None:
                for name in self.output_names:
                    host[name].copy_(dev[name], non_blocking=True)
                sync()  # the pinned host buffers are complete only now

            timed(timings, "d2h", d2h)
            outs = {name: host[name].float().numpy().astype(np.float32, copy=True) for name in self.output_names}
        return outs[self.output_names[0]] if len(outs) == 1 else outs

    def run_tensor(self, x: Any) -> Any:
        torch = self._torch
        self._check_rows(len(x))
        home = x.device
        if x.device != self.torch_device:
            x = x.to(self.torch_device)  # enqueued on the engine device's current stream
        caller = torch.cuda.current_stream(self.torch_device)
        with self._slot() as slot, torch.cuda.device(self.torch_device):
            dev = self._views(slot, slot.device, len(x))
            slot.stream.wait_stream(caller)  # the input may still be being written on the caller's stream
            with torch.cuda.stream(slot.stream):
                dev[self.input_name].copy_(x, non_blocking=True)  # casts to the engine's input dtype
                x.record_stream(slot.stream)  # freed by the caller: not reused before this copy has run
                self._execute(slot)
                outs = {name: dev[name].float().clone() for name in self.output_names}  # on the slot's stream
            caller.wait_stream(slot.stream)  # the caller reads the outputs only after they are written
            for out in outs.values():
                out.record_stream(caller)
        outs = {k: v.to(home) for k, v in outs.items()} if home != self.torch_device else outs
        return outs[self.output_names[0]] if len(outs) == 1 else outs

    def layer_profile(self) -> dict[str, dict[str, float]] | None:
        return None if self._profiler is None else self._profiler.summary(self._runs)

    def close(self) -> None:
        while not self._slots.empty():
            self._slots.get_nowait()
