"""Boilerplate shared by the benchmark scripts: timing a call with the collector off, the latency summary
of :mod:`psvit.runtime.profiler`, and the JSON result written whole or not at all.

The scripts run as ``python benchmarks/x.py`` (and the tests load them by file path), so each one puts this
folder on ``sys.path`` before ``import _common``. psvit is imported lazily here: ``gpu_latency.py`` makes it
importable (its ``bootstrap``) only after parsing its arguments.
"""
from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def time_calls(fn: Callable[[], Any], iters: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Per-call seconds of ``iters`` calls of ``fn`` (garbage collector off while timing, as timeit).

    ``clock``: wall time by default; ``time.thread_time`` counts only the CPU time of the calling thread
    (robust against other processes' load, meaningful only when ``fn`` computes in this thread)."""
    samples = []
    gc.disable()
    try:
        for _ in range(iters):
            t0 = clock()
            fn()
            samples.append(clock() - t0)
    finally:
        gc.enable()
    return samples


def stats_ms(times_ms: Sequence[float], batch: int = 1) -> Any:
    """:func:`psvit.runtime.profiler.latency_stats` of latencies given in milliseconds."""
    from psvit.runtime.profiler import latency_stats

    return latency_stats([t / 1e3 for t in times_ms], batch)


def write_json(path: Path | None, data: Any, say: Callable[[str], None] = print) -> None:
    """Write ``data`` as indented JSON to ``path`` (no-op for None); parents are created, and a failure
    leaves no half-written file (:func:`psvit.provenance.atomic_output`)."""
    if path is None:
        return
    from psvit.provenance import atomic_output

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, default=str) + "\n"  # serialise first: a TypeError writes nothing
    with atomic_output(path, suffix=".json") as tmp:
        tmp.write_text(text)
    say(f"wrote {path}")


def fp32_onnx(model: str | Path, folder: Path) -> Path:
    """An FP32 ONNX file for ``model``: the file itself when it is one, else ``model`` (checkpoint, ``demo`` or
    variant with random weights) exported into ``folder``."""
    if str(model).endswith(".onnx"):
        return Path(model)
    from psvit.export import export_onnx

    path = Path(folder) / "fp32.onnx"
    export_onnx(str(model), path, count=2)
    return path
