"""ONNX Runtime's profiler output (``SessionOptions.enable_profiling``) as per-op-type totals."""
from __future__ import annotations

import json
import os
from collections import defaultdict


def op_type_totals(path: str | os.PathLike, runs: int = 1, skip_runs: int = 0) -> dict[str, dict[str, float]]:
    """``{op type: {"ms_per_run", "calls_per_run", "share"}}`` sorted by time, from a profile JSON file.

    Kernel events (``cat == "Node"``, name ending ``_kernel_time``) are summed per ``args.op_name``; their
    ``dur`` is in microseconds. ``runs`` is how many ``run`` calls the session made while profiling; the
    kernels of the first ``skip_runs`` of them (warm-up: buffer allocation lands on whichever node runs
    first) are left out.
    """
    with open(path) as f:
        events = json.load(f)
    run_ends = sorted(ev.get("ts", 0) + ev.get("dur", 0) for ev in events
                      if ev.get("cat") == "Session" and ev.get("name") == "model_run")
    skip_runs = min(skip_runs, len(run_ends))
    after = run_ends[skip_runs - 1] if skip_runs > 0 else float("-inf")
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for ev in events:
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time") or ev.get("ts", 0) < after:
            continue
        op = ev.get("args", {}).get("op_name", "?")
        totals[op] += float(ev.get("dur", 0)) / 1000.0
        calls[op] += 1
    return per_run_totals(totals, calls, runs - skip_runs)


def per_run_totals(totals_ms: dict[str, float], calls: dict[str, int], runs: int) -> dict[str, dict[str, float]]:
    """``{name: {"ms_per_run", "calls_per_run", "share"}}`` sorted by time, from totals over ``runs`` runs
    (the layer-profile form of the ONNX Runtime and TensorRT backends)."""
    runs = max(runs, 1)
    whole = sum(totals_ms.values()) or 1.0
    return {
        name: {"ms_per_run": ms / runs, "calls_per_run": calls[name] / runs, "share": ms / whole}
        for name, ms in sorted(totals_ms.items(), key=lambda kv: -kv[1])
    }
