"""The interface every backend implements; batching, profiling and the micro-batcher accept any of them."""
from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Union

import numpy as np

from ..batching import BatchLimits

Timings = dict[str, float]  # phase ("h2d", "compute", "d2h") -> seconds of the last call
Outputs = Union[np.ndarray, dict[str, np.ndarray]]  # one output: the array; several: name -> array


@dataclass(frozen=True)
class Concurrency:
    """What a backend allows callers to do at once (machine-readable; ``Runtime.info()["concurrency"]``).

    ``thread_safe``: ``infer`` may be called from several threads at once. ``max_parallel``: how many calls
    execute at the same time (None: as many as call; 1: one at a time, the others wait). ``mechanism``: how
    calls are kept apart — ``"none"`` (no shared state), ``"lock"`` (serialised), ``"context-pool"``
    (a pool of ``max_parallel`` TensorRT execution contexts over one engine).
    """

    thread_safe: bool
    max_parallel: int | None
    mechanism: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(ABC):
    """Runs one chunk that satisfies :attr:`limits`: float32 outputs ``(N, ...)``, one array per output.

    Subclasses set the attributes below in ``__init__``; :meth:`run` must honour :attr:`concurrency`.
    """

    name: str  # "torch" | "onnxruntime" | "tensorrt"
    description: str  # artifact and device, for tables
    device: str  # "cpu" or "cuda:N"
    precision: str  # "fp32" | "fp16" | "int8" | "mixed"
    input_shape: tuple[int, ...]  # (C, H, W) for image classifiers
    output_names: list[str] = ["logits"]
    input_dtype: Any = np.float32  # numpy dtype the artifact takes
    limits: BatchLimits = BatchLimits()
    class_names: list[str] | None = None
    preprocess: dict[str, Any] | None = None
    metadata: dict[str, Any] = {}
    concurrency: Concurrency = Concurrency(thread_safe=True, max_parallel=1, mechanism="lock")

    @abstractmethod
    def run(self, x: np.ndarray, timings: Timings | None = None) -> Outputs:
        """Outputs of one chunk ``x`` (N, C, H, W) float32; fills ``timings`` when given (synchronised)."""

    def run_tensor(self, x: Any) -> Any:
        """Outputs of a torch tensor chunk as torch tensors on the input's device (default: via numpy)."""
        import torch

        out = self.run(x.detach().float().cpu().numpy())
        if isinstance(out, dict):
            return {k: torch.from_numpy(v).to(x.device) for k, v in out.items()}
        return torch.from_numpy(out).to(x.device)

    async def arun(self, x: np.ndarray) -> Outputs:
        """:meth:`run` for asyncio: in a worker thread unless the backend has a native asynchronous call."""
        return await asyncio.to_thread(self.run, x)

    def layer_profile(self) -> dict[str, dict[str, float]] | None:
        """Per-layer (or per-op-type) time totals collected since loading, if profiling was enabled."""
        return None

    def close(self) -> None:
        """Release sessions, contexts and device buffers."""


def timed(timings: Timings | None, phase: str, fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> Any:
    """Call ``fn``; when ``timings`` is given record its wall time under ``phase`` (after ``sync``)."""
    if timings is None:
        return fn()
    t0 = time.perf_counter()
    out = fn()
    if sync is not None:
        sync()
    timings[phase] = time.perf_counter() - t0
    return out
