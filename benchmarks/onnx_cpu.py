"""ONNX Runtime CPU latency of our exports (not a test: prints a table and writes JSON).

1. DeiT-S: our static-token export (dynamo) vs timm's own ONNX export of the same weights (TorchScript
   exporter, ``timm.utils.onnx.onnx_export`` defaults), with the run-time shape ops each graph holds.
2. PSViT: the same model exported with shared attention ``map``, ``qk`` and ``auto``.

Batch 1 and 8, median of timed runs after warm-up, same process and machine for every row; rows are timed
interleaved (round-robin) so that load from other processes on a shared CPU hits all of them alike.
Random weights (latency does not depend on them). Usage::

    .venv/bin/python benchmarks/onnx_cpu.py [--psvit psvit_2d_tiny] [--rounds 5] [--json out/onnx_cpu.json]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by file path (tests)
from _common import stats_ms, time_calls, write_json  # noqa: E402

SHAPE_OPS = ("Shape", "Gather", "Concat", "Unsqueeze", "Slice", "ConstantOfShape", "Expand")


def open_session(path: Path, batch: int, threads: int | None) -> tuple[Any, np.ndarray]:
    """The graph on ONNX Runtime CPU (through psvit.runtime) and a random input batch for it."""
    from psvit.runtime import load

    rt = load(path, threads=threads)
    x = np.random.default_rng(0).standard_normal((batch, *rt.input_shape), dtype=np.float32)
    return rt, x


def interleaved_latency(
    cases: dict[tuple[str, str, int], tuple[Any, np.ndarray]], rounds: int, runs_per_round: int
) -> dict[tuple[str, str, int], dict[str, float]]:
    """Time every case in turn, ``rounds`` times: load changes on a shared CPU hit all rows alike."""
    times: dict[tuple[str, str, int], list[float]] = {k: [] for k in cases}
    for rt, x in cases.values():  # warm-up
        rt.warmup([len(x)])
    for _ in range(rounds):
        for key, (rt, x) in cases.items():
            times[key] += [t * 1e3 for t in time_calls(lambda: rt.infer(x), runs_per_round)]
    out = {}
    for key, ts in times.items():
        s = stats_ms(ts, batch=key[2])
        out[key] = {"median_ms": s.median_ms, "mean_ms": s.mean_ms, "p90_ms": s.p90_ms, "min_ms": s.min_ms,
                    "runs": s.iterations}
    return out


def graph_facts(path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    return {"nodes": len(model.graph.node), "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            **{op: ops.get(op, 0) for op in SHAPE_OPS}, "Softmax": ops.get("Softmax", 0)}


def export_timm_deit_small(ours_state: dict, path: Path) -> None:
    """timm's DeiT-S with our weights, exported the way timm's onnx_export.py does by default."""
    import timm
    from timm.utils.onnx import onnx_export

    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    model.load_state_dict(ours_state, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the TorchScript exporter
        onnx_export(model, str(path), batch_size=2, input_size=(3, 224, 224), check=True, use_dynamo=False,
                    input_names=["images"], output_names=["logits"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--psvit", default="psvit_2d_tiny", help="PSViT variant for the map/qk comparison")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=5, help="passes over all rows (interleaved timing)")
    parser.add_argument("--runs-per-round", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all cores)")
    parser.add_argument("--json", type=Path, default=Path("out/onnx_cpu.json"))
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    from rich.console import Console
    from rich.table import Table

    from psvit.export import compare, export_onnx
    from psvit.export.inputs import random_images
    from psvit.runtime import load

    console = Console(width=max(Console().width, 140))  # the table has 12 columns
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        console.print("[dim]exporting deit_small (ours, dynamo, static tokens)...[/]")
        ours = export_onnx("deit_small", tmp / "deit_small.ours.onnx", count=2)
        console.print("[dim]exporting deit_small (timm, TorchScript exporter)...[/]")
        timm_path = tmp / "deit_small.timm.onnx"
        export_timm_deit_small(ours.source.model.state_dict(), timm_path)
        parity = compare(load(ours.path), load(timm_path), random_images(2, (3, 224, 224)))
        artifacts = [("deit_small", "ours (dynamo, static tokens)", ours.path),
                     ("deit_small", "timm onnx_export (TorchScript)", timm_path)]
        for mode in ("map", "qk", "auto"):
            console.print(f"[dim]exporting {args.psvit} shared attention {mode}...[/]")
            r = export_onnx(args.psvit, tmp / f"{args.psvit}.{mode}.onnx", shared_attention=mode, count=2)
            label = mode if mode != "auto" else f"auto ({'/'.join(r.sharing.modes)})"
            artifacts.append((args.psvit, f"shared attention {label}", r.path))
        cases = {(m, v, b): open_session(p, b, args.threads) for m, v, p in artifacts for b in batches}
        console.print(f"[dim]timing {len(cases)} rows, {args.rounds} interleaved rounds...[/]")
        timings = interleaved_latency(cases, args.rounds, args.runs_per_round)
        for model, variant, path in artifacts:
            facts = graph_facts(path)
            for b in batches:
                rows.append({"model": model, "export": variant, "batch": b, **facts, **timings[(model, variant, b)]})

    def ratio(model: str, a: str, b: str, batch: int) -> float:
        pick = {r["export"]: r for r in rows if r["model"] == model and r["batch"] == batch}
        return pick[a]["median_ms"] / pick[b]["median_ms"]

    table = Table(title=f"ONNX Runtime CPU latency ({os.cpu_count()} cores, threads={args.threads or 'default'}, "
                        f"{args.rounds} interleaved rounds x {args.runs_per_round} runs)")
    for col in ("model", "export", "batch", "median ms", "p90 ms", "runs", "nodes", "Shape", "Gather", "Concat",
                "Unsqueeze", "Softmax"):
        table.add_column(col, justify="left" if col in ("model", "export") else "right")
    for r in rows:
        table.add_row(r["model"], r["export"], str(r["batch"]), f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}",
                      str(r["runs"]), str(r["nodes"]), str(r["Shape"]), str(r["Gather"]), str(r["Concat"]),
                      str(r["Unsqueeze"]), str(r["Softmax"]))
    console.print(table)
    ratios = {}
    for b in batches:
        ratios[f"deit_small ours/timm b{b}"] = ratio("deit_small", "ours (dynamo, static tokens)",
                                                   "timm onnx_export (TorchScript)", b)
        ratios[f"{args.psvit} qk/map b{b}"] = ratio(args.psvit, "shared attention qk", "shared attention map", b)
    for k, v in ratios.items():
        console.print(f"{k}: {v:.3f}")
    console.print(f"ours vs timm outputs (same weights): rel L2 {parity.worst_rel_l2:.2e}")
    result = {"rows": rows, "ratios": ratios, "ours_vs_timm_rel_l2": parity.worst_rel_l2,
              "cpu_count": os.cpu_count(), "threads": args.threads}
    from psvit.provenance import package_versions

    result["versions"] = package_versions("torch", "onnx", "onnxruntime", "timm")
    write_json(args.json, result, say=console.print)


if __name__ == "__main__":
    main()
