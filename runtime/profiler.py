"""Latency profiling as trtexec/perf_analyzer report it: warm-up by count or time, N timed iterations,
mean/median/p90/p95/p99/min/max, coefficient of variation, throughput; phases timed separately.

Phases of one iteration: ``end_to_end`` (``Runtime.infer`` on a host array: copies, chunking, compute),
``compute`` (the backend's compute alone, synchronised on GPU), ``h2d``/``d2h`` (GPU copies, where they
apply) and ``preprocess`` (the artifact's image preprocessing of a batch of decoded images, timed apart).
Percentiles interpolate linearly between samples (numpy's default).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import RuntimeInputError
from .predict import preprocessor

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyStats:
    """Statistics of one phase at one batch size; times in milliseconds."""

    batch: int
    iterations: int
    mean_ms: float
    median_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    cv: float  # std / mean
    throughput: float  # images per second = batch / mean latency

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_stats(seconds: list[float] | np.ndarray, batch: int) -> LatencyStats:
    """Statistics of per-iteration latencies given in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        raise RuntimeInputError("no latency samples to summarise; run at least one iteration")
    p50, p90, p95, p99 = np.percentile(ms, PERCENTILES)
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    return LatencyStats(
        batch=batch, iterations=int(ms.size), mean_ms=mean, median_ms=float(p50), p90_ms=float(p90),
        p95_ms=float(p95), p99_ms=float(p99), min_ms=float(ms.min()), max_ms=float(ms.max()), std_ms=std,
        cv=std / mean if mean > 0 else math.nan, throughput=batch * 1000.0 / mean if mean > 0 else math.inf,
    )


@dataclass(frozen=True)
class Warmup:
    """Warm-up by iteration count or by wall time."""

    iterations: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.seconds:g}s" if self.seconds else str(self.iterations)


def parse_warmup(text: str | int | float) -> Warmup:
    """``20`` -> 20 iterations; ``"2s"``, ``"500ms"`` -> wall time."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise RuntimeInputError(f"warm-up must be >= 0, got {text}")
        return Warmup(iterations=int(text))
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", str(text))
    if not m:
        raise RuntimeInputError(f"warm-up {text!r} not understood; give iterations (20) or a time (2s, 500ms)")
    value, unit = float(m.group(1)), m.group(2)
    if unit is None:
        if not value.is_integer():
            raise RuntimeInputError(f"warm-up iterations must be a whole number, got {text!r}; add 's' for seconds")
        return Warmup(iterations=int(value))
    return Warmup(seconds=value / 1000.0 if unit == "ms" else value)


def warm_up(fn: Any, warmup: Warmup) -> int:
    """Call ``fn`` for the warm-up; returns how many calls were made."""
    calls = 0
    stop = time.perf_counter() + warmup.seconds
    while calls < warmup.iterations or time.perf_counter() < stop:
        fn()
        calls += 1
    return calls


def sample_batch(batch: int, input_shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A normalised-looking float32 batch (standard normal), the same for a seed."""
    return np.random.default_rng(seed).standard_normal((batch, *input_shape), dtype=np.float32)


def profile_runtime(rt: Any, batch: int, *, warmup: Warmup | str | int = 10, iters: int = 50,
                    preprocess: bool = True, seed: int = 0) -> dict[str, LatencyStats]:
    """Time ``rt.infer`` at ``batch``: ``{phase: LatencyStats}`` for end_to_end, compute, h2d/d2h, preprocess."""
    if batch < 1 or iters < 1:
        raise RuntimeInputError(f"batch and iterations must be at least 1, got {batch} and {iters}")
    warm = warmup if isinstance(warmup, Warmup) else parse_warmup(warmup)
    x = sample_batch(batch, rt.input_shape, seed)
    warm_up(lambda: rt.infer(x), warm)
    phases: dict[str, list[float]] = {"end_to_end": []}
    for _ in range(iters):
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        rt.infer(x, timings)  # returns a host array: GPU work is finished
        phases["end_to_end"].append(time.perf_counter() - t0)
        for phase, seconds in timings.items():
            phases.setdefault(phase, []).append(seconds)
    if preprocess and rt.backend.preprocess:
        pre = rt.preprocess_images
        size = preprocessor(rt.backend.preprocess, rt.input_shape).resize_size  # decoded images of that size
        images = list(np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
        pre(images[:1])
        samples = []
        for _ in range(max(1, min(iters, 20))):
            t0 = time.perf_counter()
            pre(images)
            samples.append(time.perf_counter() - t0)
        phases["preprocess"] = samples
    return {phase: latency_stats(s, batch) for phase, s in phases.items()}
