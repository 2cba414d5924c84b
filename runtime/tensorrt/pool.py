"""A pool of execution slots on one GPU: the device, stream and buffer rules of the TensorRT backend.

A slot is one executor (a TensorRT execution context; in the tests a PyTorch stand-in) with its own CUDA
stream, device buffers allocated once at the largest shapes it will see, and pinned host mirrors of them.
The rules, written once here and tested on any CUDA GPU with PyTorch (TensorRT not needed):

- everything runs under the pool's device (``cuda:N``), whatever the caller's current device is;
- :meth:`ExecutionPool.run` (host arrays): pinned host -> device copy, execute, device -> pinned host, all on
  the slot's stream, then one synchronisation;
- :meth:`ExecutionPool.run_tensor` (CUDA tensors): the slot's stream waits for the caller's current stream,
  the input is marked used on the slot's stream (``record_stream``), the caller's stream waits for the slot's
  stream, and the outputs are marked used on the caller's stream; the host never blocks;
- up to ``len(slots)`` calls run at once; further callers wait for a free slot. A batch uses the leading
  elements of the buffers, so no call allocates device memory and buffer addresses never change.

Imports torch only when a pool is built (the runtime's TensorRT core is importable without it).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from ..backends.base import Outputs, Timings, timed


class Executor(Protocol):
    """What a slot runs: a TensorRT execution context, or anything that behaves like one."""

    def bind(self, buffers: dict[str, Any]) -> None:
        """Take the slot's device buffers (flat tensors, one per I/O tensor; fixed for the slot's life)."""

    def shapes(self, n: int) -> dict[str, tuple[int, ...]]:
        """Prepare a batch of ``n`` rows; the shape of every I/O tensor for it."""

    def execute(self, stream: Any) -> None:
        """Enqueue the work on ``stream`` (a ``torch.cuda.Stream``); inputs are in the buffers."""


class Slot:
    """One executor with its CUDA stream, device buffers and pinned host buffers (flat, at max sizes)."""

    def __init__(self, torch: Any, device: Any, executor: Executor, numel: dict[str, int],
                 dtypes: dict[str, Any]) -> None:
        self.executor = executor
        self.stream = torch.cuda.Stream(device)
        self.device = {n: torch.empty(k, dtype=dtypes[n], device=device) for n, k in numel.items()}
        self.host = {n: torch.empty(k, dtype=dtypes[n], pin_memory=True) for n, k in numel.items()}
        executor.bind(self.device)

    @staticmethod
    def views(buffers: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        """The leading elements of each buffer, shaped for this batch."""
        return {n: buffers[n][: int(np.prod(s))].view(s) for n, s in shapes.items()}


class ExecutionPool:
    """Slots over one model on one GPU, run from any number of threads (see the module docstring).

    Args:
        device: ``torch.device("cuda:N")``.
        executors: one per slot.
        input_name, output_names: the I/O tensors; outputs come back in this order.
        max_shapes: the largest shape of every I/O tensor (the buffers' sizes).
        dtypes: the torch dtype of every I/O tensor.
    """

    def __init__(self, device: Any, executors: list[Executor], input_name: str, output_names: list[str],
                 max_shapes: dict[str, tuple[int, ...]], dtypes: dict[str, Any]) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.input_name, self.output_names = input_name, list(output_names)
        numel = {n: int(np.prod(s)) for n, s in max_shapes.items()}
        self.slots: list[Slot] = []
        with torch.cuda.device(self.device):
            self.slots = [Slot(torch, self.device, e, numel, dtypes) for e in executors]
        self._free: queue.Queue[Slot] = queue.Queue()
        for slot in self.slots:
            self._free.put(slot)
        self.runs = 0
        self._runs_lock = threading.Lock()

    @property
    def size(self) -> int:
        return len(self.slots)

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        """A free slot for one call (waits while every slot is busy)."""
        slot = self._free.get()
        try:
            with self._runs_lock:
                self.runs += 1
            yield slot
        finally:
            self._free.put(slot)

    def _result(self, outs: dict[str, Any]) -> Any:
        return outs[self.output_names[0]] if len(outs) == 1 else outs

    def run(self, x: np.ndarray, timings: Timings | None = None) -> Outputs:
        """Outputs (float32 numpy) of a host batch; ``timings`` gets h2d/compute/d2h (synchronised)."""
        torch = self.torch
        with self.slot() as slot, torch.cuda.device(self.device), torch.cuda.stream(slot.stream):
            shapes = slot.executor.shapes(len(x))
            dev, host = Slot.views(slot.device, shapes), Slot.views(slot.host, shapes)
            host[self.input_name].copy_(torch.from_numpy(np.ascontiguousarray(x)))  # casts to the input dtype
            sync = slot.stream.synchronize
            timed(timings, "h2d", lambda: dev[self.input_name].copy_(host[self.input_name], non_blocking=True), sync)
            timed(timings, "compute", lambda: slot.executor.execute(slot.stream), sync)

            def d2h() -> None:
                for name in self.output_names:
                    host[name].copy_(dev[name], non_blocking=True)
                sync()  # the pinned host buffers are complete only now

            timed(timings, "d2h", d2h)
            outs = {n: host[n].float().numpy().astype(np.float32, copy=True) for n in self.output_names}
        return self._result(outs)

    def run_tensor(self, x: Any) -> Any:
        """Outputs (float32 tensors on ``x``'s device) of a torch batch, ordered on the caller's stream."""
        torch = self.torch
        home = x.device
        with torch.cuda.device(self.device):
            if x.device != self.device:
                x = x.to(self.device)  # enqueued on this device's current stream
            caller = torch.cuda.current_stream(self.device)
            with self.slot() as slot:
                shapes = slot.executor.shapes(len(x))
                dev = Slot.views(slot.device, shapes)
                slot.stream.wait_stream(caller)  # the input may still be being written on the caller's stream
                with torch.cuda.stream(slot.stream):
                    dev[self.input_name].copy_(x, non_blocking=True)  # casts to the input dtype
                    x.record_stream(slot.stream)  # freed by the caller: not reused before this copy has run
                    slot.executor.execute(slot.stream)
                    outs = {n: dev[n].float().clone() for n in self.output_names}  # allocated on the slot's stream
                caller.wait_stream(slot.stream)  # the caller reads the outputs only after they are written
                for out in outs.values():
                    out.record_stream(caller)  # ... and frees them only after its own work on them
            if home != self.device:
                outs = {n: v.to(home) for n, v in outs.items()}
        return self._result(outs)

    def close(self) -> None:
        self.slots = []
