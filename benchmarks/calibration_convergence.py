"""How many calibration images each method needs (not a test: prints a table, writes JSON).

For every method, the per-tensor ranges from the first N synthetic calibration images (N = 16 ... 1024)
against those from ``--reference`` images (default 2048), on the demo model (trained, so its activations
are those of a real classifier): the median and 90th percentile over tensors of |range_N / range_ref - 1|.
This is where ``psvit.calibration.methods.MIN_IMAGES`` (a warning below it) and the default
``--calib-count`` of 512 come from.

Usage::

    .venv/bin/python benchmarks/calibration_convergence.py --json benchmarks/results/calibration_convergence.json
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
from _common import fp32_onnx, write_json  # noqa: E402

METHODS = ("max", "percentile", "entropy", "mse")


def ranges_of(model: Path, fp32: Any, method: str, count: int, work: Path) -> dict[str, float]:
    from psvit.calibration.collect import calibrate_ranges
    from psvit.calibration.data import load_calibration_set
    from psvit.calibration.recipe import OP_TYPES

    data = load_calibration_set("synthetic", preprocess=fp32.preprocess, input_shape=fp32.input_shape, count=count)
    cal = calibrate_ranges(model, data, method=method, input_name=fp32.input_name, batch=64,
                           static_batch=fp32.static_batch, op_types=OP_TYPES, workdir=work)
    return {k: float(np.asarray(v.range_value[1]).reshape(-1)[0]) for k, v in cal.ranges.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="FP32 .onnx, checkpoint or 'demo' (default)")
    ap.add_argument("--counts", default="16,32,64,128,256,512,1024")
    ap.add_argument("--reference", type=int, default=2048)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import onnx
    from rich.console import Console
    from rich.table import Table

    from psvit.calibration.model import load_fp32_model, quantization_graph

    counts = [int(c) for c in args.counts.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="calib-conv.") as tmpdir:
        work = Path(tmpdir)
        path = fp32_onnx(args.model, work)
        fp32 = load_fp32_model(path)
        model = work / "named.onnx"
        onnx.save(quantization_graph(path), str(model))  # the graph calibration streams through
        for method in methods:
            ref = ranges_of(model, fp32, method, args.reference, work)
            for count in counts:
                got = ranges_of(model, fp32, method, count, work)
                rel = np.array([abs(got[k] / ref[k] - 1) for k in ref if ref[k] > 0])
                rows.append({"method": method, "count": count, "tensors": int(rel.size),
                             "median_rel_diff": float(np.median(rel)), "p90_rel_diff": float(np.percentile(rel, 90)),
                             "max_rel_diff": float(rel.max())})

    console = Console(width=120)
    t = Table(title=f"per-tensor ranges from N images vs {args.reference} images: median / p90 relative difference")
    t.add_column("method")
    for c in counts:
        t.add_column(str(c), justify="right")
    for method in methods:
        by = {r["count"]: r for r in rows if r["method"] == method}
        t.add_row(method, *[f"{by[c]['median_rel_diff']:.1%} / {by[c]['p90_rel_diff']:.1%}" for c in counts])
    console.print(t)
    data = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
            "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": rows}
    write_json(args.json, data, say=console.print)
    return data


if __name__ == "__main__":
    main()
