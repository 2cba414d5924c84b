"""Latency on the deployment target: measured through the real toolchain, and a model of it for the many
candidates that are not measured.

Measuring a candidate = what deployment does: a checkpoint of it (random weights: latency does not depend on
the values) is exported with :func:`psvit.export.export_onnx` (verified against PyTorch, 0 shape ops) and
timed with :func:`psvit.runtime.profile_runtime` on the chosen backend, device and batch. Several candidates
are timed in interleaved rounds (each round runs every model once, in a rotated order), and a candidate's
latency is the median of its round medians, so background load hits all of them alike.

The latency model: ``latency = overhead + sum of per-component costs``, one cost per block kind (token count,
width, heads and sharing role: computes its own map, hands it to a sharer [PyTorch only, where a shared map
must be materialised], or shares; sharing mode ``map``/``qk`` of its stage) and per pooling layer kind (kind,
op, tokens and widths in and out). The costs are fitted on the target by least squares on the relative error
of whole-model latencies of a calibration set chosen to cover every component several times; fitting whole
models (rather than timing components alone) keeps the inter-op effects of the real graph in the costs. Its
stated error is the leave-one-out relative error on the calibration set.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PSViTConfig
from .errors import SearchError
from .space import Candidate, SearchSpace

BACKENDS = ("onnxruntime", "tensorrt", "torch")
DEVICES = ("cpu", "cuda")
Log = Callable[[str], None]


@dataclass(frozen=True)
class LatencyTarget:
    """Where the searched model will run: backend, device, batch, CPU threads, the export's sharing mode and
    how each measurement is taken (warm-up iterations, then ``rounds`` interleaved rounds of ``iters``)."""

    backend: str = "onnxruntime"
    device: str = "cpu"
    batch: int = 1
    threads: int | None = None
    shared_attention: str = "map"
    warmup: int = 10
    iters: int = 20
    rounds: int = 10

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise SearchError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.device not in DEVICES:
            raise SearchError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.backend == "tensorrt" and self.device != "cuda":
            raise SearchError("TensorRT engines run on a GPU: use --device cuda with --backend tensorrt")
        if self.batch < 1:
            raise SearchError(f"--batch must be at least 1, got {self.batch}")
        if self.threads is not None and self.threads < 1:
            raise SearchError(f"--threads must be at least 1, got {self.threads}")
        if self.shared_attention not in ("map", "qk"):
            raise SearchError(f"shared attention mode must be map or qk, got {self.shared_attention!r}")
        if min(self.iters, self.rounds) < 1 or self.warmup < 0:
            raise SearchError("a measurement needs at least one round of one iteration")

    def describe(self) -> str:
        threads = f", {self.threads} thread(s)" if self.threads else ""
        return f"{self.backend} {self.device}, batch {self.batch}{threads}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- components -----------------------------------------------------------------------------------
def _block_role(cfg: PSViTConfig, b: int, target: LatencyTarget) -> str:
    shared = set(cfg.share)
    if b in shared:
        return f"share-{target.shared_attention}"
    # Exported graphs compute a map-owner's attention like any other block; eager PyTorch must materialise
    # a map that is shared instead of running its fused kernel.
    if target.backend == "torch" and (b + 1) in shared:
        return "provide"
    return "own"


def component_counts(cfg: PSViTConfig, target: LatencyTarget) -> Counter[str]:
    """How often each component kind occurs in ``cfg`` (the latency model's features)."""
    counts: Counter[str] = Counter()
    for b in range(cfg.depth):
        s = cfg.stage_of_block(b)
        role = _block_role(cfg, b, target)
        counts[f"block {role} n={cfg.tokens[s]} d={cfg.dims[s]} h={cfg.heads[s]}"] += 1
    for s in range(cfg.num_stages - 1):
        counts[(f"pool {cfg.pool_kinds[s]}/{cfg.pool_ops[s]} n={cfg.tokens[s]}->{cfg.tokens[s + 1]} "
                f"d={cfg.dims[s]}->{cfg.dims[s + 1]}")] += 1
    return counts


def component_universe(space: SearchSpace, target: LatencyTarget) -> list[str]:
    """Every component kind that some candidate of ``space`` contains, sorted."""
    names: set[str] = set()
    for kinds in space.kind_sequences:
        for ops in [(op,) * space.num_pools for op in space.ops]:
            depths = space.max_depths
            # the longest stages with sharing on every second block show every role; all-own shows "own"
            for share in (tuple(() for _ in depths), tuple(tuple(range(1, d, 2)) for d in depths),
                          tuple(tuple(range(1, d)) for d in depths)):
                names.update(component_counts(space.to_config(Candidate(depths, kinds, ops, share)), target))
    return sorted(names)


# ---- the model ------------------------------------------------------------------------------------
@dataclass
class LatencyModel:
    """``predict(cfg) = overhead_ms + sum(count * cost_ms)`` over the components of ``cfg``."""

    target: dict[str, Any]
    costs_ms: dict[str, float]
    overhead_ms: float
    loo_rel_errors: list[float] = field(default_factory=list)

    def predict(self, cfg: PSViTConfig, target: LatencyTarget) -> float:
        counts = component_counts(cfg, target)
        unknown = sorted(set(counts) - set(self.costs_ms))
        if unknown:
            raise SearchError(f"the latency model was not calibrated for {unknown}; recalibrate (delete "
                              f"latency.json in the search folder)")
        return self.overhead_ms + sum(n * self.costs_ms[k] for k, n in counts.items())

    @property
    def stated_error(self) -> float:
        """90th percentile of the leave-one-out absolute relative error on the calibration set."""
        return float(np.percentile(np.abs(self.loo_rel_errors), 90)) if self.loo_rel_errors else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "overhead_ms": self.overhead_ms, "costs_ms": self.costs_ms,
                "loo_rel_errors": self.loo_rel_errors, "stated_error": self.stated_error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyModel":
        return cls(target=d["target"], costs_ms={k: float(v) for k, v in d["costs_ms"].items()},
                   overhead_ms=float(d["overhead_ms"]), loo_rel_errors=[float(e) for e in d["loo_rel_errors"]])


def _solve(rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on the relative error: minimise sum(((rows @ w) - y) / y)^2; min-norm if rank-deficient."""
    a = rows / y[:, None]
    w, *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
    return w


def fit_latency_model(counts: Sequence[dict[str, int]], latencies_ms: Sequence[float], target: LatencyTarget,
                      names: Sequence[str] | None = None) -> LatencyModel:
    """Fit the per-component costs and the overhead to measured whole-model latencies."""
    names = sorted({k for c in counts for k in c}) if names is None else list(names)
    y = np.asarray(latencies_ms, dtype=np.float64)
    if len(y) < 2 or np.any(y <= 0):
        raise SearchError("latency calibration needs at least two positive measurements")
    rows = np.array([[1.0] + [float(c.get(k, 0)) for k in names] for c in counts])  # (m, 1 + p)
    w = _solve(rows, y)
    loo = []
    for i in range(len(y)):  # leave-one-out: the stated error
        keep = np.arange(len(y)) != i
        wi = _solve(rows[keep], y[keep])
        loo.append(float(rows[i] @ wi / y[i] - 1.0))
    return LatencyModel(target=target.to_dict(), costs_ms={k: float(v) for k, v in zip(names, w[1:])},
                        overhead_ms=float(w[0]), loo_rel_errors=loo)


def calibration_design(space: SearchSpace, target: LatencyTarget, size: int | None, rng: np.random.Generator,
                       min_cover: int = 3, draws: int = 64) -> list[Candidate]:
    """Candidates to measure: the largest one, then greedily those that cover components seen fewer than
    ``min_cover`` times, then random ones up to ``size`` (default: 1.5 x the number of unknowns, >= 16)."""
    universe = component_universe(space, target)
    size = size or max(16, math.ceil(1.5 * (len(universe) + 1)))
    size = min(size, space.size())
    chosen: dict[str, Candidate] = {}
    cover: Counter[str] = Counter()

    def take(c: Candidate) -> None:
        chosen[c.key] = c
        cover.update(component_counts(space.to_config(c), target).keys())

    take(space.largest())
    while len(chosen) < size:
        pool = [space.sample(rng) for _ in range(draws)]
        pool = [c for c in pool if c.key not in chosen] or pool
        if any(cover[k] < min_cover for k in universe):
            gain = [sum(1 for k in component_counts(space.to_config(c), target) if cover[k] < min_cover) for c in pool]
            best = pool[int(np.argmax(gain))]
        else:
            best = pool[0]
        if best.key in chosen:
            continue
        take(best)
    return list(chosen.values())


# ---- measuring ------------------------------------------------------------------------------------
class LatencyMeter:
    """Exports candidates and times them on ``target`` through :mod:`psvit.runtime` (interleaved rounds)."""

    def __init__(self, target: LatencyTarget, group: int | None = None, log: Log | None = None) -> None:
        self.target = target
        self.group = group  # models loaded and interleaved at once; None: as many as ~1.5 GB of weights allow
        self.say = log or (lambda _m: None)

    def _group_size(self, configs: Sequence[PSViTConfig]) -> int:
        if self.group is not None:
            return max(1, self.group)
        from ..stats import model_stats

        largest = max(model_stats(c).params for c in configs)
        return max(4, min(64, int(1.5e9 // (12 * largest))))  # weights x ~3 copies (torch, ONNX, session)

    def _artifact(self, cfg: PSViTConfig, folder: Path, name: str) -> Path:
        """The file that is timed: a checkpoint (torch), its ONNX export or an engine built from it."""
        import torch

        import psvit

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = psvit.create_model(cfg)
        ckpt = psvit.save_checkpoint(model, folder / f"{name}.safetensors")
        if self.target.backend == "torch":
            return ckpt
        from ..export import export_onnx

        onnx_path = folder / f"{name}.onnx"
        export_onnx(ckpt, onnx_path, batch=self.target.batch, shared_attention=self.target.shared_attention,
                    count=2)
        if self.target.backend == "onnxruntime":
            return onnx_path
        from ..export import build_engine_file

        engine = folder / f"{name}.engine"
        build_engine_file(onnx_path, engine, batch=str(self.target.batch))
        return engine

    def _load(self, artifact: Path) -> Any:
        from ..runtime import load

        options: dict[str, Any] = {}
        if self.target.threads and self.target.backend != "tensorrt":
            options["threads"] = self.target.threads
        return load(artifact, backend=self.target.backend, device=self.target.device, **options)

    def measure(self, configs: Sequence[PSViTConfig], progress: Callable[[int], None] | None = None) -> list[float]:
        """Median latency (ms) of each config at the target batch: the median of its round medians."""
        from ..runtime import profile_runtime

        t = self.target
        results: list[float] = [math.nan] * len(configs)
        folder = Path(tempfile.mkdtemp(prefix="psvit-search-latency-"))
        try:
            group = self._group_size(configs)
            for start in range(0, len(configs), group):
                idx = list(range(start, min(start + group, len(configs))))
                runtimes = []
                for i in idx:
                    runtimes.append(self._load(self._artifact(configs[i], folder, f"c{i}")))
                    if progress is not None:
                        progress(1)
                    if (i + 1) % 10 == 0 or i + 1 == len(configs):
                        self.say(f"latency: {i + 1}/{len(configs)} candidates exported and loaded")
                try:
                    for rt in runtimes:
                        profile_runtime(rt, t.batch, warmup=t.warmup, iters=1, preprocess=False)
                    rounds: list[list[float]] = [[] for _ in idx]
                    for r in range(t.rounds):
                        order = list(range(len(idx)))
                        order = order[r % len(order):] + order[:r % len(order)]  # rotate: no fixed position
                        for j in order:
                            stats = profile_runtime(runtimes[j], t.batch, warmup=0, iters=t.iters, preprocess=False)
                            rounds[j].append(stats["end_to_end"].median_ms)
                    for j, i in enumerate(idx):
                        results[i] = float(np.median(rounds[j]))
                finally:
                    for rt in runtimes:
                        rt.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return results


def calibrate(space: SearchSpace, target: LatencyTarget, rng: np.random.Generator, size: int | None = None,
              log: Log | None = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Measure a calibration set on ``target`` and fit the model: ``{"candidates", "latency_ms", "model"}``."""
    design = calibration_design(space, target, size, rng)
    configs = [space.to_config(c) for c in design]
    (log or (lambda _m: None))(f"latency calibration: {len(design)} candidates on {target.describe()}")
    measured = LatencyMeter(target, log=log).measure(configs, progress)
    model = fit_latency_model([component_counts(c, target) for c in configs], measured, target,
                              names=component_universe(space, target))
    return {"candidates": [c.to_dict() for c in design], "latency_ms": measured, "model": model.to_dict()}


def min_predicted(space: SearchSpace, model: LatencyModel, target: LatencyTarget, rng: np.random.Generator,
                  limit: int = 20000) -> float:
    """The smallest predicted latency in the space (exact when it has at most ``limit`` candidates)."""
    cands = space.enumerate() if space.size() <= limit else (space.sample(rng) for _ in range(limit))
    return min(model.predict(space.to_config(c), target) for c in cands)

