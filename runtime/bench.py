"""Benchmark several artifacts/backends over batch sizes: one report, one comparison table, JSON."""
from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .profiler import LatencyStats, Warmup, parse_warmup, profile_runtime

LAYER_PROFILE_ITERS = 10  # profiled runs for per-layer times (a separate, instrumented load)


@dataclass
class TargetResult:
    """One artifact on one backend: stats per batch size and phase, per-layer times where available."""

    artifact: str
    backend: str
    description: str
    device: str
    precision: str
    batches: dict[int, dict[str, LatencyStats]] = field(default_factory=dict)
    layers: dict[str, dict[str, float]] | None = None
    layers_batch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact, "backend": self.backend, "description": self.description,
            "device": self.device, "precision": self.precision,
            "batches": {str(b): {p: s.to_dict() for p, s in phases.items()} for b, phases in self.batches.items()},
            "layers": self.layers, "layers_batch": self.layers_batch,
        }


@dataclass
class BenchReport:
    targets: list[TargetResult]
    settings: dict[str, Any]
    machine: dict[str, Any]

    def comparison(self, phase: str = "end_to_end") -> list[dict[str, Any]]:
        """Rows (target x batch): the phase's stats, compute and preprocess stats, median ratio vs the first target."""
        rows = []
        first = self.targets[0] if self.targets else None
        for t in self.targets:
            for b, phases in t.batches.items():
                s = phases[phase]
                base = first.batches.get(b, {}).get(phase) if first else None
                rows.append({"target": t, "batch": b, "stats": s,
                             "compute": phases.get("compute"), "preprocess": phases.get("preprocess"),
                             "ratio": s.median_ms / base.median_ms if base else None})
        return rows

    def to_dict(self) -> dict[str, Any]:
        comparison = [{"artifact": r["target"].artifact, "backend": r["target"].backend, "batch": r["batch"],
                       "median_ms": r["stats"].median_ms, "ratio": r["ratio"]} for r in self.comparison()]
        return {"machine": self.machine, "settings": self.settings, "results": [t.to_dict() for t in self.targets],
                "comparison": comparison}


def cpu_name() -> str:
    """The ``model name`` line of /proc/cpuinfo (platform.processor() or the machine type elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured: CPU, threads, GPU name if one is visible."""
    info: dict[str, Any] = {"platform": platform.platform(), "processor": cpu_name(),
                            "cpu_count": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


# Options of a whole run that only some backends take; the other artifacts of the run ignore them.
_BACKEND_OPTIONS = {"providers": ("onnxruntime",), "threads": ("onnxruntime", "torch")}


def _options_for(kind: str, options: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """The run's ``options`` that the ``kind`` backend takes (``threads`` is a CPU setting: not an engine's)."""
    opts = dict(options)
    for name, backends in _BACKEND_OPTIONS.items():
        if name in opts and kind not in backends:
            del opts[name]
            say(f"{name} does not apply to {kind} artifacts; ignored for them")
    return opts


def _checked_kind(spec: Any) -> str:
    """The backend of ``spec``; a named file that does not exist is refused now (its loader would say so only
    when its turn comes)."""
    from ..artifacts import detect_artifact
    from ..errors import ArtifactError

    art = detect_artifact(spec)
    if art.path is not None and not art.path.exists():
        raise ArtifactError(f"{spec} does not exist; check the path (benchmarks start only when every artifact "
                            f"is there)")
    return art.backend


def bench(
    artifacts: list[Any],
    *,
    backend: str = "auto",
    device: str | None = None,
    batches: list[int] = (1, 8, 32),  # type: ignore[assignment]
    warmup: Warmup | str | int = 10,
    iters: int = 50,
    layers: bool = True,
    options: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Profile each artifact at each batch size (see :func:`psvit.runtime.profile_runtime`).

    ``artifacts``: paths / names for :func:`psvit.runtime.load`, or runtimes already loaded (closed after).
    ``layers``: also load an instrumented copy (ORT profiler, TensorRT IProfiler) and run it
    :data:`LAYER_PROFILE_ITERS` times at the largest batch for per-layer times; PyTorch offers none here.
    """
    from .api import load
    from .core import Runtime

    say = log or (lambda _m: None)
    warm = warmup if isinstance(warmup, Warmup) else parse_warmup(warmup)
    # What each artifact is, before any timing: a missing or unknown second artifact fails now, not after
    # minutes of timing the first.
    kinds = [None if isinstance(art, Runtime) else _checked_kind(art) for art in artifacts]
    results = []
    for art, kind in zip(artifacts, kinds):
        if kind is None:  # a loaded runtime (it cannot be loaded again for the layer profile)
            rt, art = art, art.name
            opts: dict[str, Any] = {}
        else:
            opts = _options_for(kind, options or {}, say)
            rt = load(art, backend=backend, device=device, **opts)
        b = rt.backend
        res = TargetResult(str(art), b.name, b.description, b.device, b.precision)
        with rt:
            for n in batches:
                say(f"{b.description}: batch {n} (warm-up {warm}, {iters} iterations)")
                res.batches[n] = profile_runtime(rt, n, warmup=warm, iters=iters)
        if layers and kind is not None and b.name in ("onnxruntime", "tensorrt"):
            n = max(batches)
            with load(art, backend=backend, device=device, profiling=True, **opts) as prof:
                x = np.zeros((n, *prof.input_shape), np.float32)
                for _ in range(LAYER_PROFILE_ITERS):
                    prof.infer(x)
                res.layers, res.layers_batch = prof.layer_profile(), n
        results.append(res)
    settings = {"batches": list(batches), "warmup": str(warm), "iters": iters, "backend": backend, "device": device}
    return BenchReport(results, settings, machine_info())
