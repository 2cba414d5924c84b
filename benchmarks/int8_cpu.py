"""INT8 calibration on the demo model (not a test: prints tables and writes JSON).

1. Each calibration method (max, percentile, entropy, mse) with the default PSViT recipe: top-1 of FP32 and
   INT8 on the demo's synthetic held-out split, accuracy drop, top-1 agreement, logits cosine, and the
   calibration time (ORT CPU, fresh cache each time).
2. ONNX Runtime CPU latency, FP32 vs INT8 (rest FP16, the TensorRT-bound default) vs INT8 --keep-fp32,
   at batch 1 and 8: median of timed runs after warm-up, rows interleaved round-robin so background load
   on a shared CPU hits all of them alike. ORT CPU runs FP16 nodes slowly, so the --keep-fp32 row is the
   one that says what Q/DQ costs or saves on CPU; GPU speed-ups are TensorRT's business, not measured here.

Usage::

    .venv/bin/python benchmarks/int8_cpu.py [--calib-count 256] [--eval-count 1600] [--rounds 30]
        [--threads 1] [--json out/int8_cpu.json]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by file path (tests)
from _common import fp32_onnx, stats_ms, write_json  # noqa: E402

METHODS = ("max", "percentile", "entropy", "mse")


def session(path: Path, threads: int) -> Any:
    """The graph on ONNX Runtime CPU, through psvit.runtime."""
    from psvit.runtime import load

    return load(path, threads=threads)


def latency(models: dict[str, Path], batches: tuple[int, ...], rounds: int, warmup: int, threads: int
            ) -> list[dict[str, Any]]:
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
        sessions = {name: session(p, threads) for name, p in models.items()}
        for s in sessions.values():
            for _ in range(warmup):
                s.infer(x)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        order = list(sessions)
        for r in range(rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                t0 = time.perf_counter()
                sessions[name].infer(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
        stats = {name: stats_ms(ts, batch) for name, ts in times.items()}
        for name, ts in times.items():
            s = stats[name]
            rows.append({"model": name, "batch": batch, "median_ms": s.median_ms, "p90_ms": s.p90_ms,
                         "ratio_to_fp32": s.median_ms / stats["fp32"].median_ms, "times_ms": ts})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="FP32 .onnx, checkpoint or 'demo' (default)")
    ap.add_argument("--calib-count", type=int, default=256)
    ap.add_argument("--eval-count", type=int, default=None, help="held-out images (default: all 1600)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from psvit.calibration import quantize_onnx
    from psvit.calibration.evaluation import load_eval_set
    from psvit.calibration.model import load_fp32_model
    from psvit.calibration.report import accuracy_report
    console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="int8-bench.") as tmpdir:
        tmp = Path(tmpdir)
        fp32_path = fp32_onnx(args.model, tmp)
        fp32 = load_fp32_model(fp32_path)
        data = load_eval_set("synthetic", preprocess=fp32.preprocess, metadata=fp32.metadata, count=args.eval_count)
        methods = []
        for method in METHODS:
            out = tmp / f"int8_{method}.onnx"
            r = quantize_onnx(fp32_path, out, calib_data="synthetic", calib_count=args.calib_count,
                              calib_method=method)
            rep = accuracy_report(fp32_path, out, data)
            methods.append({"method": method, "calibration_s": r.calibration_seconds, "total_s": r.seconds,
                            **{k: rep[k] for k in ("fp32_top1", "int8_top1", "top1_drop_points", "top1_agreement",
                                                   "cosine_mean", "rel_l2", "images")}})
        keep = quantize_onnx(fp32_path, tmp / "int8_fp32rest.onnx", calib_data="synthetic",
                             calib_count=args.calib_count, keep_fp32=True)
        lat = latency({"fp32": fp32_path, "int8": tmp / "int8_max.onnx", "int8_keep_fp32": keep.path},
                      (1, 8), args.rounds, args.warmup, args.threads)

    t = Table(title=f"calibration methods, demo model, {methods[0]['images']} held-out images "
                    f"({args.calib_count} synthetic calibration images)")
    for c in ("method", "FP32 top-1", "INT8 top-1", "drop (pt)", "agreement", "cosine", "calib. s"):
        t.add_column(c, justify="right")
    for m in methods:
        t.add_row(m["method"], f"{m['fp32_top1']:.2%}", f"{m['int8_top1']:.2%}", f"{m['top1_drop_points']:+.2f}",
                  f"{m['top1_agreement']:.2%}", f"{m['cosine_mean']:.5f}", f"{m['calibration_s']:.1f}")
    console.print(t)
    t = Table(title=f"ONNX Runtime CPU latency ({args.threads} thread(s), median of {args.rounds}, shared CPU)")
    for c in ("model", "batch", "median ms", "p90 ms", "x FP32"):
        t.add_column(c, justify="right")
    for row in lat:
        t.add_row(row["model"], str(row["batch"]), f"{row['median_ms']:.3f}", f"{row['p90_ms']:.3f}",
                  f"{row['ratio_to_fp32']:.2f}")
    console.print(t)
    write_json(args.json, {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(), "settings": vars(args) | {"json": str(args.json)},
        "methods": methods, "latency": lat,
    }, say=console.print)


if __name__ == "__main__":
    main()
