"""The interface every backend implements; batching, profiling and the micro-batcher accept any of them."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from ..batching import BatchLimits

Timings = dict[str, float]  # phase ("h2d", "compute", "d2h") -> seconds of the last call


class Backend(ABC):
    """Runs one chunk that satisfies :attr:`limits` and returns float32 logits ``(N, classes)``.

    Subclasses set the attributes below in ``__init__``. ``thread_safety`` states the backend's rule in
    words (it is shown by ``Runtime.info()``); :meth:`run` must honour it.
    """

    name: str  # "torch" | "onnxruntime" | "tensorrt"
    description: str  # artifact and device, for tables
    device: str  # "cpu" or "cuda:N"
    precision: str  # "fp32" | "fp16" | "int8" | "mixed"
    input_shape: tuple[int, int, int]  # (C, H, W)
    input_dtype: Any = np.float32  # numpy dtype the artifact takes
    limits: BatchLimits = BatchLimits()
    class_names: list[str] | None = None
    preprocess: dict[str, Any] | None = None
    metadata: dict[str, Any] = {}
    thread_safety: str = ""

    @abstractmethod
    def run(self, x: np.ndarray, timings: Timings | None = None) -> np.ndarray:
        """Logits of one chunk ``x`` (N, C, H, W) float32; fills ``timings`` when given (synchronised)."""

    def run_tensor(self, x: Any) -> Any:
        """Logits of a torch tensor chunk as a torch tensor on the input's device (default: via numpy)."""
        import torch

        out = self.run(x.detach().float().cpu().numpy())
        return torch.from_numpy(out).to(x.device)

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
