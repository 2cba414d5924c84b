"""Peak memory and time of INT8 calibration per method and image count (not a test: prints tables, writes JSON).

1. For every count (default 128, 512, 2000) and method (max, percentile, entropy, mse): ``quantize_onnx`` on
   an FP32 ONNX of ``psvit_2d_tiny`` at 224 (random weights) with synthetic calibration images, each run in
   its own Python process, one at a time. Peak RSS is that process's ``ru_maxrss`` (``os.wait4``); the
   table also gives the calibration time per image and the ratio of the peak at the largest count to the
   peak at the smallest (the streaming calibration aims at <= 1.5x, and under 4 GB).
2. The per-tensor ranges (scale = range / 127) at ``--reference-count`` images (default 512) against the
   all-at-once computation the project used before streaming: every image in memory, ONNX Runtime's
   calibrators given all batches in one ``collect_data`` call (the activations of every batch kept, then
   turned into histograms). That reference needs ~30 MB per image for psvit_2d_tiny at 224 (~17 GB at 512):
   it runs first, and only when ``/proc/meminfo`` says that much plus a margin (19 GB at 512) is available
   (``--wait-for-memory`` seconds at most), else at the largest count that fits; the JSON says which.

Usage (the lead's re-run on a quiet machine)::

    .venv/bin/python benchmarks/calibration_memory.py --json benchmarks/results/calibration_memory.json
    .venv/bin/python benchmarks/calibration_memory.py --counts 128,512 --methods max,entropy --reference-count 0
    .venv/bin/python benchmarks/calibration_memory.py --counts "" --methods percentile,entropy,mse \
        --wait-for-memory 3600 --json benchmarks/results/calibration_reference_512.json   # the reference only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by file path (tests)
from _common import fp32_onnx, write_json  # noqa: E402

METHODS = ("max", "percentile", "entropy", "mse")
REFERENCE_MB_PER_IMAGE = 32.0  # psvit_2d_tiny at 224, measured: the reference keeps every activation
REFERENCE_MARGIN_GB = 3.0  # 512 images: 16 + 3 = 19 GB must be available


# ---- child processes ---------------------------------------------------------------------------------
def child_calibrate(args: argparse.Namespace) -> dict[str, Any]:
    """One streaming calibration (this process does nothing else)."""
    from psvit.calibration import quantize_onnx

    work = Path(args.work)
    r = quantize_onnx(args.fp32, work / f"{args.method}_{args.count}.int8.onnx", calib_data="synthetic",
                      calib_count=args.count, calib_batch=args.batch, calib_method=args.method, force_recalibrate=True)
    cache = json.loads(r.cache_path.read_text())
    return {"images": r.images, "calibration_s": r.calibration_seconds, "seconds_per_image": r.seconds_per_image,
            "total_s": r.seconds, "peak_rss_bytes_self": r.peak_rss_bytes, "ranges": _highest(cache["ranges"])}


def child_reference(args: argparse.Namespace) -> dict[str, Any]:
    """The pre-streaming computation: all images in memory, ORT's calibrators fed every batch at once."""
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from psvit.calibration.collect import quiet_ort
    from psvit.calibration.data import load_calibration_set
    from psvit.calibration.methods import ENTROPY_BINS, NUM_BINS, PERCENTILE, mse_threshold
    from psvit.calibration.model import load_fp32_model, quantization_graph
    from psvit.calibration.recipe import OP_TYPES

    work = Path(args.work)
    fp32 = load_fp32_model(args.fp32)
    images = load_calibration_set("synthetic", preprocess=fp32.preprocess, input_shape=fp32.input_shape,
                                  count=args.count).take(args.count)  # (N, C, H, W), all in memory
    proto = quantization_graph(fp32.path)  # the graph calibration streams through
    model = work / "reference_named.onnx"
    onnx.save(proto, str(model))

    class AllBatches:
        def __init__(self) -> None:
            self.batches = iter(range(0, len(images), args.batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.batches, None)
            return None if start is None else {fp32.input_name: images[start:start + args.batch]}

    kind = {"max": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}.get(args.method,
                                                                                      CalibrationMethod.Percentile)
    options = {"max": {"symmetric": True},
               "entropy": {"symmetric": True, "num_bins": ENTROPY_BINS, "num_quantized_bins": 128}}.get(
        args.method, {"symmetric": True, "num_bins": NUM_BINS, "percentile": PERCENTILE})
    start = time.perf_counter()
    with quiet_ort():
        calibrator = create_calibrator(model, list(OP_TYPES), augmented_model_path=str(work / "reference_aug.onnx"),
                                       calibrate_method=kind, extra_options=options)
        calibrator.collect_data(AllBatches())
        out = {"percentile": {}, "mse": {}} if args.method in ("percentile", "mse") else {args.method: {}}
        if args.method in ("percentile", "mse"):  # one histogram pass serves both (as before streaming)
            out["percentile"] = {k: float(np.asarray(v.range_value[1]).reshape(-1)[0])
                                 for k, v in calibrator.compute_data().items()}
            for name, (hist, edges, *_rest) in calibrator.collector.histogram_dict.items():
                out["mse"][name] = float(np.float32(mse_threshold(np.asarray(hist), np.asarray(edges, np.float64))))
        else:
            out[args.method] = {k: float(np.asarray(v.range_value[1]).reshape(-1)[0])
                                for k, v in calibrator.compute_data().items()}
    return {"images": len(images), "seconds": time.perf_counter() - start, "ranges": out}


def _highest(ort_ranges: dict[str, Any]) -> dict[str, float]:
    """{tensor: upper range} from ORT's saved ``TensorsData`` JSON."""
    out = {}
    for name, td in ort_ranges["data"].items():
        v = td["highest"]
        out[name] = float(np.asarray(v["data"] if isinstance(v, dict) else v, np.float64).reshape(-1)[0])
    return out


# ---- parent --------------------------------------------------------------------------------------------
def available_gb() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: line.split()[1] for line in f}
    return int(info["MemAvailable"]) / 2**20


def run_child(argv: list[str], out_json: Path) -> tuple[dict[str, Any], int]:
    """Run this script as a child with ``argv``; (its JSON result, its peak RSS in bytes)."""
    proc = subprocess.Popen([sys.executable, __file__, *argv, "--result", str(out_json)])
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(argv)} failed with exit code {proc.returncode}")
    return json.loads(out_json.read_text()), int(usage.ru_maxrss) * 1024


def reference_count(method: str, wanted: int, batch: int, wait_s: float) -> int | None:
    """The largest count up to ``wanted`` whose all-at-once reference fits in the available memory (waiting up
    to ``wait_s`` seconds for ``wanted`` to fit); ``max`` keeps no activations, so it always fits."""
    need = lambda c: c * REFERENCE_MB_PER_IMAGE / 1024 + REFERENCE_MARGIN_GB  # noqa: E731
    if method == "max":
        return wanted
    deadline = time.monotonic() + wait_s
    while need(wanted) > available_gb() and time.monotonic() < deadline:
        time.sleep(30)
    # multiples of the batch: the pre-streaming code needs every batch to have the same size
    candidates = [wanted, *(c for c in (384, 256, 128, 64) if c < wanted)]
    return next((c for c in candidates if need(c) <= available_gb() and c % batch == 0), None)


def compare(ours: dict[str, float], ref: dict[str, float]) -> dict[str, Any]:
    rel = np.array([abs(ours[k] / ref[k] - 1) if ref[k] else abs(ours[k]) for k in ref])
    worst = max(ref, key=lambda k: abs(ours[k] / ref[k] - 1) if ref[k] else abs(ours[k]))
    return {"tensors": len(rel), "median_rel_diff": float(np.median(rel)),
            "p90_rel_diff": float(np.percentile(rel, 90)), "max_rel_diff": float(rel.max()),
            "over_1pct": int((rel > 0.01).sum()), "worst_tensor": worst,
            "worst": {"ours": ours[worst], "reference": ref[worst]}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="psvit_2d_tiny", help="variant (random weights) or an FP32 .onnx")
    ap.add_argument("--counts", default="128,512,2000")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reference-count", type=int, default=512, help="0: no all-at-once reference")
    ap.add_argument("--wait-for-memory", type=float, default=0.0,
                    help="seconds to wait for the reference's memory to be available before using fewer images")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", choices=("calibrate", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--fp32", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        result = (child_calibrate if args.child == "calibrate" else child_reference)(args)
        args.result.write_text(json.dumps(result))
        return result

    counts = [int(c) for c in args.counts.split(",") if c]
    methods = [m for m in args.methods.split(",") if m]
    load_start = os.getloadavg()
    rows: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="calib-mem.") as tmpdir:
        work = Path(tmpdir)
        fp32 = fp32_onnx(args.model, work)
        common = ["--fp32", str(fp32), "--work", str(work), "--batch", str(args.batch)]

        def calibrate(method: str, count: int) -> tuple[dict[str, Any], int]:
            return run_child(["--child", "calibrate", "--method", method, "--count", str(count), *common],
                             work / "result.json")

        # The all-at-once references first, while the machine has the memory (they need the most).
        ref_ranges: dict[tuple[str, int], dict[str, float]] = {}
        ref_facts: dict[tuple[str, int], dict[str, Any]] = {}
        if args.reference_count:
            for method in [m for m in methods if m != "mse" or "percentile" not in methods]:  # mse rides on percentile
                count = reference_count(method, args.reference_count, args.batch, args.wait_for_memory)
                if count is None:
                    references.append({"method": method, "skipped": f"{available_gb():.1f} GB available"})
                    continue
                avail = available_gb()
                res, peak = run_child(["--child", "reference", "--method", method, "--count", str(count), *common],
                                      work / "result.json")
                for m, ranges in res["ranges"].items():
                    if m in methods:
                        ref_ranges[(m, count)] = ranges
                        ref_facts[(m, count)] = {"reference_peak_rss_bytes": peak, "reference_s": res["seconds"],
                                                 "available_gb_before": round(avail, 1)}
                print(f"reference {method} at {count} images: peak {peak / 2**30:.2f} GB", flush=True)

        ours: dict[tuple[str, int], dict[str, float]] = {}
        for count in counts:
            for method in methods:  # counts outer, methods inner: load drifts hit every method alike
                res, peak = calibrate(method, count)
                ours[(method, count)] = res.pop("ranges")
                rows.append({"method": method, "count": count, "peak_rss_bytes": peak, **res})
                print(f"{method:>10} {count:>5} images: peak {peak / 2**30:.2f} GB, "
                      f"{res['seconds_per_image'] * 1e3:.1f} ms/image", flush=True)
        for (method, count), ref in ref_ranges.items():
            if (method, count) not in ours:  # the reference had to run at a count not in --counts
                ours[(method, count)] = calibrate(method, count)[0]["ranges"]
            references.append({"method": method, "count": count, **ref_facts[(method, count)],
                               **compare(ours[(method, count)], ref)})

    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    summary = {}
    if rows:
        t = Table(title=f"streaming calibration of {args.model}: peak RSS and ms per image, batch {args.batch}")
        t.add_column("method")
        for c in counts:
            t.add_column(f"{c} images", justify="right")
        t.add_column(f"peak {counts[-1]} / {counts[0]}", justify="right")
        for method in methods:
            by = {r["count"]: r for r in rows if r["method"] == method}
            ratio = by[counts[-1]]["peak_rss_bytes"] / by[counts[0]]["peak_rss_bytes"]
            summary[method] = {"peak_ratio_last_first": ratio,
                               "max_peak_gb": max(r["peak_rss_bytes"] for r in by.values()) / 2**30}
            t.add_row(method, *[f"{by[c]['peak_rss_bytes'] / 2**30:.2f} GB, {by[c]['seconds_per_image'] * 1e3:.0f} ms"
                                for c in counts], f"{ratio:.2f}x")
        console.print(t)
    if references:
        t = Table(title="per-tensor ranges (scales) vs the all-at-once ORT computation")
        for c in ("method", "images", "tensors", "median diff", "max diff", "> 1%", "reference peak"):
            t.add_column(c, justify="right")
        for r in references:
            if "skipped" in r:
                t.add_row(r["method"], "skipped", r["skipped"], "", "", "", "")
                continue
            t.add_row(r["method"], str(r["count"]), str(r["tensors"]), f"{r['median_rel_diff']:.4%}",
                      f"{r['max_rel_diff']:.4%}", str(r["over_1pct"]),
                      f"{r['reference_peak_rss_bytes'] / 2**30:.1f} GB")
        console.print(t)
    data = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if v is not None},
            "rows": rows, "summary": summary, "reference": references}
    write_json(args.json, data, say=console.print)
    return data


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


if __name__ == "__main__":
    main()
