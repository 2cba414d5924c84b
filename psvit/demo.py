"""The whole pipeline on the bundled model: ONNX FP32/FP16/INT8, engines where a builder is installed,
accuracy per precision on the held-out synthetic images, latency per backend on this machine.

The held-out set is regenerated from the demo checkpoint's metadata (data seed/count/size and the split's
``val_fraction``), so its images are the ones the training run never saw. Every stage that cannot run here
is kept as a row with the reason, never dropped silently.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PSViTError

SUMMARY = "demo_summary.json"
MARKER = ".psvit-demo"  # written first: a stopped run's folder is still recognised as the demo's
FORMAT = "psvit-demo/1"


@dataclass
class DemoResult:
    out: Path
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # name, precision, path, bytes, seconds, status
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # what, why
    heldout: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "out": str(self.out), "heldout": self.heldout, "artifacts": self.artifacts,
                "accuracy": self.accuracy, "latency": self.latency, "skipped": self.skipped,
                "machine": self.machine, "seconds": self.seconds}


def prepare_out(out: str | os.PathLike, force: bool = False) -> Path:
    """Create ``out``; refuse a non-empty folder that holds no previous demo output (unless ``force``).

    A marker file is written first, so the folder of a demo run that was stopped midway (Ctrl-C, a failure)
    is still recognised as the demo's own and replaced by the next run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PSViTError(f"--out {out} is a file; give a folder")
    ours = (out / SUMMARY).is_file() or (out / MARKER).is_file()
    if out.is_dir() and any(out.iterdir()) and not ours and not force:
        raise PSViTError(f"--out {out} is not empty and holds no earlier demo output ({SUMMARY}); choose an empty "
                         f"or new folder, or pass --force to write into it")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("psvit-export demo writes here; the next demo run replaces its files\n")
    return out


def check_settings(heldout: int | None, batches: tuple[int, ...], iters: int, threads: int | None) -> None:
    """Bad settings fail before minutes of exports, not after."""
    for name, value in (("--heldout", heldout), ("--iters", iters), ("--threads", threads)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise PSViTError(f"{name} must be at least 1, got {value}")
    if not batches or any(b < 1 for b in batches):
        raise PSViTError(f"--batch takes positive batch sizes, got {list(batches)}")


def heldout_set(ckpt: Any, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(images float32 (N, C, H, W), labels, facts): the demo's held-out split, regenerated."""
    from .data.synthetic import SyntheticSplit, generate_synthetic
    from .preprocessing import Preprocess

    split = SyntheticSplit.from_training_metadata(ckpt.metadata)
    if split is None:
        raise PSViTError("the demo checkpoint records no synthetic training data; retrain it with "
                         "`psvit-export train --data synthetic` (README: 'The bundled demo model')")
    held = split.heldout_indices()
    if limit is not None:
        held = held[:limit]
    synth = generate_synthetic(split.count, split.seed, split.size, indices=held)
    pre = Preprocess.from_dict(ckpt.preprocess)
    images = pre.batch(list(synth.images))  # (N, C, H, W) float32
    facts = {"generator": "psvit-synthetic", **split.to_dict(), "images": len(held), "fingerprint": synth.fingerprint(),
             "training_heldout_top1": (ckpt.metadata.get("training") or {}).get("heldout_top1")}
    return images, synth.labels, facts


def _rel_l2(ref: np.ndarray, x: np.ndarray) -> float:
    return float(np.linalg.norm((x - ref).astype(np.float64)) / max(np.linalg.norm(ref.astype(np.float64)), 1e-30))


def accuracy_row(name: str, precision: str, backend: str, logits: np.ndarray, labels: np.ndarray,
                 reference: np.ndarray) -> dict[str, Any]:
    """Top-1 accuracy on the labels, top-1 agreement and relative L2 error vs the PyTorch FP32 logits."""
    pred = logits.argmax(1)
    return {"artifact": name, "precision": precision, "backend": backend,
            "top1": float(np.mean(pred == labels)), "agreement": float(np.mean(pred == reference.argmax(1))),
            "rel_l2": _rel_l2(reference, logits), "images": int(len(labels))}


def _engines(onnx_files: dict[str, Path], out: Path, result: DemoResult, calibration: Any,
             say: Callable[[str], None]) -> None:
    """Build an engine per precision through the pipeline where a TensorRT builder imports; the plans cannot
    run without a GPU. The INT8 engine gets its own graph, its rest FP16 (the TensorRT target's)."""
    from . import pipeline
    from .errors import MissingDependencyError
    from .export.tensorrt import resolve_builder

    try:
        flavour = resolve_builder("auto").name
    except (MissingDependencyError, PSViTError) as exc:
        result.skipped.append({"what": "TensorRT engines", "why": str(exc)})
        return
    for precision, onnx_path in onnx_files.items():
        say(f"building a {flavour} engine for {precision.upper()} (optimization level 0)")
        path = out / f"demo.{precision}.engine"
        int8 = precision == "int8"
        source = onnx_files["fp32"] if int8 else onnx_path  # INT8: its own graph, rest FP16 (TensorRT's)
        t0 = time.perf_counter()
        try:
            res = pipeline.engine(
                source, path, int8=int8, calib_data=calibration.data if int8 else None,
                calib_count=calibration.count if int8 else None,
                calib_cache=out / "demo.int8.onnx.calib.json" if int8 else None,  # the ranges calibrated above
                onnx_out=out / "demo.int8.tensorrt.onnx" if int8 else None, builder=flavour, optimization_level=0,
                log=say,
            )
        except Exception as exc:  # noqa: BLE001 - a builder failure is a row of the demo, not its end
            result.artifacts.append({"name": path.name, "precision": precision, "kind": f"{flavour} engine",
                                     "status": f"build failed: {str(exc).splitlines()[-1].strip()}"})
            continue
        how = "reused" if res.reused else "built"
        result.artifacts.append({"name": path.name, "precision": precision,
                                 "kind": f"{flavour} {res.sidecar.version} engine",
                                 "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - t0, 2),
                                 "status": f"{how} from {res.onnx_path.name}, sidecar {res.sidecar_path.name}"})
        result.skipped.append({"what": f"{path.name} accuracy and latency",
                               "why": f"{flavour} engines run only on an NVIDIA GPU (RTX-class for TensorRT-RTX); "
                                      f"none here"})


def _verified(step: Any) -> str:
    """The verification of an export made now, or recorded in a reused one."""
    if step.export is not None:
        return f"verified (rel L2 {step.export.verification[-1].worst_rel_l2:.1e})"
    from .export.metadata import read_metadata

    recorded = read_metadata(step.path).get("psvit.verification") or [{}]
    rel = recorded[-1].get("rel_l2")
    return "reused, verified" + (f" (rel L2 {rel:.1e})" if isinstance(rel, float) else "")


def run_demo(
    out: str | os.PathLike = "runs/demo",
    *,
    heldout: int | None = None,
    batches: tuple[int, ...] = (1, 32),
    iters: int = 20,
    warmup: str = "5",
    engines: bool = True,
    force: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the demo pipeline into ``out`` and write ``demo_summary.json`` there.

    Args:
        heldout: use only the first N held-out images (None: all of them, 1600 for the bundled model).
        batches, iters, warmup: latency settings (kept short: the whole demo takes ~1-2 minutes on 2 cores).
        engines: also build TensorRT/TensorRT-RTX engines where a builder is installed.
        threads: CPU threads of every backend in the latency table (None: each framework's default).
    """
    from . import pipeline
    from .checkpoint import load_checkpoint
    from .provenance import write_json
    from .runtime import from_model, load
    from .runtime.bench import bench

    from .runtime.profiler import parse_warmup

    say = log or (lambda _m: None)
    t_all = time.perf_counter()
    check_settings(heldout, batches, iters, threads)
    parse_warmup(warmup)
    out_dir = prepare_out(out, force)
    result = DemoResult(out=out_dir)
    ckpt = load_checkpoint("demo")

    t0 = time.perf_counter()
    say("regenerating the held-out synthetic images from the checkpoint's metadata")
    images, labels, result.heldout = heldout_set(ckpt, heldout)
    result.seconds["data"] = time.perf_counter() - t0

    t_artifacts = time.perf_counter()
    onnx_files: dict[str, Path] = {}
    for precision in ("fp32", "fp16"):
        t0 = time.perf_counter()
        path = out_dir / f"demo.{precision}.onnx"
        step = pipeline.onnx_for("demo", precision, path, log=say)
        onnx_files[precision] = path
        result.artifacts.append({"name": path.name, "precision": precision, "kind": "ONNX",
                                 "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - t0, 2),
                                 "status": _verified(step)})
    t0 = time.perf_counter()
    calibration = pipeline.Calibration("synthetic", count=256)
    path = out_dir / "demo.int8.onnx"
    say(f"calibrating {path.name} on synthetic images (rest FP32: ONNX Runtime CPU runs it here)")
    try:
        step = pipeline.onnx_for(onnx_files["fp32"], "int8", path, target=pipeline.Target.ORT_CPU,
                                 calibration=calibration, log=say)
    except Exception as exc:  # noqa: BLE001 - reported as the INT8 row's reason
        result.skipped.append({"what": "INT8", "why": f"calibration failed: {type(exc).__name__}: {exc}"})
    else:
        q = step.quantize
        onnx_files["int8"] = path
        result.artifacts.append({"name": path.name, "precision": "int8", "kind": "ONNX (Q/DQ)",
                                 "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - t0, 2),
                                 "status": f"{q.qdq_nodes} Q/DQ nodes, {q.images} calibration images "
                                           f"({q.method}), rest {q.precision_rest}"})
    result.seconds["artifacts"] = time.perf_counter() - t_artifacts  # the ONNX exports and INT8 together
    if engines:
        t0 = time.perf_counter()
        _engines(onnx_files, out_dir, result, calibration, say)
        result.seconds["engines"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say(f"accuracy on {len(labels)} held-out images")
    torch_rt = from_model(ckpt.model, name="demo", class_names=ckpt.class_names,  # the checkpoint loaded above
                          **({"threads": threads} if threads else {}))
    reference = torch_rt.infer(images)
    result.accuracy.append(accuracy_row("demo.safetensors", "fp32", "PyTorch CPU", reference, labels, reference))
    for precision, path in onnx_files.items():
        with load(path) as rt:
            result.accuracy.append(accuracy_row(path.name, precision, "ONNX Runtime CPU", rt.infer(images), labels,
                                                reference))
    result.seconds["accuracy"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = bench([torch_rt, *map(str, onnx_files.values())], batches=list(batches), warmup=warmup, iters=iters,
                   layers=False, options={"threads": threads} if threads else None, log=say)
    result.machine = report.machine
    for target in report.targets:
        for b, phases in target.batches.items():
            s = phases["end_to_end"]
            result.latency.append({
                "artifact": Path(target.artifact).name, "backend": f"{target.backend} {target.device}",
                "precision": target.precision, "batch": b, "median_ms": s.median_ms, "p90_ms": s.p90_ms,
                "p99_ms": s.p99_ms, "cv": s.cv, "throughput": s.throughput,
            })
    result.seconds["latency"] = time.perf_counter() - t0
    result.seconds["total"] = time.perf_counter() - t_all
    write_json(out_dir / SUMMARY, result.to_dict())
    return result
