"""ONNX Runtime CPU: our exports against timm's, with what ORT's optimizer fused and where the time goes.

1. DeiT-S: our export (``export_onnx``: dynamo, static tokens, fusable GELU and attention) against timm's own
   ONNX export of the same weights (TorchScript exporter, ``timm.utils.onnx.onnx_export`` defaults).
2. PSViT (``--psvit``): exported with shared attention ``map``, ``qk`` and ``auto``.

Timing: every artifact loaded through ``psvit.runtime.load``; batch 1 and 8, rows timed interleaved
(round-robin, the starting row rotated each round) so load from other processes hits all of them alike;
median of all timed calls. Profile: each artifact loaded once more with ORT's profiler (the code of
``psvit-export inspect --fusions``) at the largest batch: the time per op type of ours and timm's side by
side, and the fusions ORT applied to each graph. Recorded with the figures: CPU model, load average before
and after, threads, versions. Random weights (latency does not depend on them). One command::

    .venv/bin/python benchmarks/onnx_cpu.py            # JSON: benchmarks/results/onnx_cpu_<cpu>.json

On a shared machine, ``--threads 1 --clock thread`` times the CPU time of the calling thread instead
(``..._threads1_cputime.json``): robust against other processes' load, blind to parallel speed-ups.
``--repeat N`` loads every session afresh N times (new memory, new thread pools) and runs the interleaved
rounds again: a ratio's spread over the repeats is the machine's drift, which one run cannot show; each
ratio is reported as the median over the repeats, with every repeat's value.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by file path (tests)
from _common import stats_ms, time_calls, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OURS, TIMM = "ours", "timm (TorchScript)"
GRAPH_OPS = ("Shape", "Gather", "Concat", "Transpose", "Erf", "Gelu", "Softmax")  # counted in the file


def cpu_slug(name: str) -> str:
    """``"Intel(R) Xeon(R) Platinum 8480+"`` -> ``"intel-xeon-platinum-8480"`` (for the JSON file name)."""
    name = re.sub(r"\((R|TM|tm)\)|CPU|@.*$|Processor", " ", name)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"


def environment(threads: int | None) -> dict[str, Any]:
    from psvit.provenance import package_versions
    from psvit.runtime.bench import cpu_name

    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_model": cpu_name(), "logical_cpus": os.cpu_count(),
            "ort_threads": threads or "ORT default (physical cores)", "loadavg_start": list(os.getloadavg()),
            "versions": package_versions("torch", "onnx", "onnxscript", "onnxruntime", "timm")}


def interleaved_latency(cases: dict[tuple[str, str, int], tuple[Any, np.ndarray]], rounds: int,
                        runs_per_round: int, clock: Any = time.perf_counter) -> dict[tuple[str, str, int], dict[str, float]]:
    """Time every case in turn, ``rounds`` times, starting one row later each round."""
    keys = list(cases)
    times: dict[tuple[str, str, int], list[float]] = {k: [] for k in keys}
    for rt, x in cases.values():  # warm-up
        for _ in range(2):
            rt.infer(x)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            rt, x = cases[key]
            times[key] += [t * 1e3 for t in time_calls(lambda: rt.infer(x), runs_per_round, clock)]
    out = {}
    for key, ts in times.items():
        s = stats_ms(ts, batch=key[2])
        out[key] = {"median_ms": s.median_ms, "mean_ms": s.mean_ms, "p90_ms": s.p90_ms, "min_ms": s.min_ms,
                    "runs": s.iterations}
    return out


Key = tuple[str, str, int]  # (model, export, batch)


def repeated_latency(artifacts: list[tuple[str, str, Path]], batches: list[int], size: int, *, repeat: int,
                     rounds: int, runs_per_round: int, threads: int | None, clock: Any,
                     say: Any = print) -> list[dict[Key, dict[str, float]]]:
    """:func:`interleaved_latency` of every (artifact, batch) row, ``repeat`` times, each with sessions loaded
    afresh (closed after), so every repeat sees another memory placement and another moment of the machine."""
    from psvit.runtime import load

    out = []
    for i in range(repeat):
        say(f"[dim]timing {len(artifacts) * len(batches)} rows, {rounds} interleaved rounds"
            + (f" (repeat {i + 1} of {repeat})" if repeat > 1 else "") + "...[/]")
        runtimes = {path: load(path, threads=threads) for _, _, path in artifacts}
        try:
            cases = {(m, v, b): (runtimes[p], np.random.default_rng(0).standard_normal((b, 3, size, size), np.float32))
                     for m, v, p in artifacts for b in batches}
            out.append(interleaved_latency(cases, rounds, runs_per_round, clock))
        finally:
            for rt in runtimes.values():
                rt.close()
    return out


def combine_repeats(repeats: list[dict[Key, dict[str, float]]]) -> dict[Key, dict[str, Any]]:
    """One row's figures over the repeats: medians of the repeats' medians/means/p90s, the smallest minimum,
    all calls counted, and every repeat's median (``median_ms_repeats``)."""
    out = {}
    for key in repeats[0]:
        rs = [r[key] for r in repeats]
        out[key] = {"median_ms": float(np.median([r["median_ms"] for r in rs])),
                    "mean_ms": float(np.median([r["mean_ms"] for r in rs])),
                    "p90_ms": float(np.median([r["p90_ms"] for r in rs])),
                    "min_ms": min(r["min_ms"] for r in rs), "runs": sum(r["runs"] for r in rs),
                    "median_ms_repeats": [r["median_ms"] for r in rs]}
    return out


def latency_ratios(timings: dict[Key, dict[str, float]], deit: str, psvit: str,
                   also: list[str], batches: list[int]) -> dict[str, float]:
    """The compared pairs' median-latency ratios of one timing run (both rows timed in the same rounds)."""
    def ratio(model: str, a: str, b: str, batch: int) -> float:
        return timings[(model, a, batch)]["median_ms"] / timings[(model, b, batch)]["median_ms"]

    ratios = {}
    for b in batches:
        ratios[f"{deit} ours/timm b{b}"] = ratio(deit, OURS, TIMM, b)
        for label in also:
            ratios[f"{deit} {label}/timm b{b}"] = ratio(deit, label, TIMM, b)
            ratios[f"{deit} ours/{label} b{b}"] = ratio(deit, OURS, label, b)
        if psvit:
            ratios[f"{psvit} qk/map b{b}"] = ratio(psvit, "sharing qk", "sharing map", b)
    return ratios


def graph_facts(path: Path) -> dict[str, Any]:
    import onnx

    from psvit.export.fusions import op_counts

    model = onnx.load(str(path), load_external_data=False)
    ops = op_counts(model)
    return {"nodes": len(model.graph.node),
            "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
            **{op: ops.get(op, 0) for op in GRAPH_OPS}}


def export_timm_deit(name: str, ours_state: dict, path: Path) -> None:
    """timm's DeiT with our weights (same module names), exported the way timm's onnx_export.py does."""
    import timm
    from timm.utils.onnx import onnx_export

    model = timm.create_model(f"{name}_patch16_224", pretrained=False).eval()
    model.load_state_dict(ours_state, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the TorchScript exporter
        onnx_export(model, str(path), batch_size=2, input_size=(3, 224, 224), check=True, use_dynamo=False,
                    input_names=["images"], output_names=["logits"])


def rel_l2(a: Path, b: Path, size: int) -> float:
    """Relative L2 difference of two graphs' outputs on the same random images (same weights: ~1e-6)."""
    from psvit.runtime import load

    x = np.random.default_rng(1).standard_normal((2, 3, size, size), np.float32)
    with load(a) as ra, load(b) as rb:
        ya, yb = ra.infer(x), rb.infer(x)
    return float(np.linalg.norm(ya - yb) / np.linalg.norm(yb))


def side_by_side(profiles: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """Rows ``{"op": op type, <label>: {"ms_per_run", "calls_per_run"} | None, ...}``, the ops of all
    profiles, by the largest time in any of them; a ``total`` row first."""
    ops: dict[str, float] = {}
    for prof in profiles.values():
        for op, v in prof.items():
            ops[op] = max(ops.get(op, 0.0), v["ms_per_run"])
    total = {"op": "total", **{label: {"ms_per_run": sum(v["ms_per_run"] for v in prof.values()),
                                       "calls_per_run": sum(v["calls_per_run"] for v in prof.values())}
                               for label, prof in profiles.items()}}
    rows = [{"op": op, **{label: prof.get(op) for label, prof in profiles.items()}}
            for op in sorted(ops, key=lambda o: -ops[o])]
    return [total, *rows]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deit", default="deit_small", help="DeiT variant compared with timm's export")
    parser.add_argument("--psvit", default="psvit_2d_tiny", help="PSViT variant for the map/qk/auto rows ('' for none)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=8, help="passes over all rows (interleaved timing)")
    parser.add_argument("--runs-per-round", type=int, default=4)
    parser.add_argument("--profile-runs", type=int, default=10, help="profiled calls per artifact (0: no profile)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time everything this many times, sessions loaded afresh each time; ratios are the "
                             "median over the repeats (their spread is the machine's drift)")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's)")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall time, or the CPU time of the calling thread (needs --threads 1: ORT then computes "
                             "in it; robust against other processes' load, blind to parallel speed-ups)")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=PATH",
                        help="also time this ONNX file of the same DeiT variant in the same interleaved rounds, e.g. "
                             "a previous export (before=old.onnx); it must hold the same weights (the random "
                             "weights of 'deit_small' are seeded): its outputs are compared with timm's")
    parser.add_argument("--json", type=Path, default=None,
                        help="output JSON (default: benchmarks/results/onnx_cpu_<cpu model>.json)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    also = []
    for spec in args.also:
        label, sep, path = spec.partition("=")
        if not sep or not label or not Path(path).is_file():
            parser.error(f"--also {spec!r}: expected LABEL=PATH of an existing ONNX file")
        also.append((label, Path(path)))
    if args.repeat < 1 or args.rounds < 1 or args.runs_per_round < 1:
        parser.error("--repeat, --rounds and --runs-per-round must be at least 1")
    if args.clock == "thread" and args.threads != 1:
        parser.error("--clock thread measures the calling thread only: add --threads 1")

    from rich.console import Console
    from rich.table import Table

    from psvit.export import export_onnx
    from psvit.export.fusions import onnxruntime_fusions
    from psvit.provenance import sha256_file

    console = Console(width=max(Console().width, 140))
    env = environment(args.threads)
    console.print(f"[dim]{env['cpu_model']}, {env['logical_cpus']} logical CPUs, load average "
                  f"{' '.join(f'{v:.2f}' for v in env['loadavg_start'])}[/]")
    rows: list[dict[str, Any]] = []
    fusions: dict[str, dict[str, Any]] = {}
    profiles: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        console.print(f"[dim]exporting {args.deit} (ours)...[/]")
        ours = export_onnx(args.deit, tmp / f"{args.deit}.ours.onnx", count=2)
        console.print(f"[dim]exporting {args.deit} (timm, TorchScript exporter)...[/]")
        timm_path = tmp / f"{args.deit}.timm.onnx"
        export_timm_deit(args.deit, ours.source.model.state_dict(), timm_path)
        size = ours.source.config.img_size
        parity = rel_l2(ours.path, timm_path, size)
        artifacts = [(args.deit, OURS, ours.path), (args.deit, TIMM, timm_path), *((args.deit, lb, p) for lb, p in also)]
        also_parity = {label: rel_l2(path, timm_path, size) for label, path in also}
        for label, value in also_parity.items():
            if value > 1e-4:
                raise SystemExit(f"--also {label}: its outputs differ from timm's by {value:.2e} relative L2: "
                                 f"not the same weights")
        for mode in ("map", "qk", "auto") if args.psvit else ():
            console.print(f"[dim]exporting {args.psvit} shared attention {mode}...[/]")
            r = export_onnx(args.psvit, tmp / f"{args.psvit}.{mode}.onnx", shared_attention=mode, count=2)
            label = mode if mode != "auto" else f"auto ({'/'.join(r.sharing.modes)})"
            artifacts.append((args.psvit, f"sharing {label}", r.path))
        clock = time.thread_time if args.clock == "thread" else time.perf_counter
        repeats = repeated_latency(artifacts, batches, size, repeat=args.repeat, rounds=args.rounds,
                                   runs_per_round=args.runs_per_round, threads=args.threads, clock=clock,
                                   say=console.print)
        timings = combine_repeats(repeats)
        for model, variant, path in artifacts:
            console.print(f"[dim]profiling {model} {variant}...[/]")
            report = onnxruntime_fusions(path, threads=args.threads, batch=max(batches), runs=args.profile_runs)
            key = f"{model} {variant}"
            fusions[key] = {"fused": report.fused, "removed": report.removed, "problems": report.problems,
                            "optimized_ops": report.optimized_ops}
            profiles[key] = report.time_by_op or {}
            after = report.optimized_ops
            for b in batches:
                rows.append({"model": model, "export": variant, "batch": b, **graph_facts(path),
                             "ort_nodes": sum(after.values()), "ort_transpose": after.get("Transpose", 0),
                             "ort_erf": after.get("Erf", 0), "gelu_fused": report.gelu_fused,
                             **timings[(model, variant, b)]})
    env["loadavg_end"] = list(os.getloadavg())

    labels = [label for label, _ in also]
    ratio_repeats = [latency_ratios(t, args.deit, args.psvit, labels, batches) for t in repeats]
    ratios = {k: float(np.median([r[k] for r in ratio_repeats])) for k in ratio_repeats[0]}

    what = "latency" if args.clock == "wall" else "CPU time of the calling thread"
    table = Table(title=f"ONNX Runtime CPU {what}: {env['cpu_model']}, threads={args.threads or 'default'}, "
                        f"{args.rounds} interleaved rounds x {args.runs_per_round} runs"
                        + (f", median of {args.repeat} repeats" if args.repeat > 1 else ""))
    for col in ("model", "export", "batch", "median ms", "p90 ms", "opset", "nodes → ORT", "Shape", "Transpose → ORT",
                "GELU fused"):
        table.add_column(col, justify="left" if col in ("model", "export") else "right")
    for r in rows:
        table.add_row(r["model"], r["export"], str(r["batch"]), f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}",
                      str(r["opset"]), f"{r['nodes']} → {r['ort_nodes']}", str(r["Shape"]),
                      f"{r['Transpose']} → {r['ort_transpose']}", f"{r['gelu_fused']} ({r['ort_erf']} Erf left)")
    console.print(table)
    pair = {label: profiles[f"{args.deit} {label}"] for label in (TIMM, OURS)}
    compared = side_by_side(pair)
    prof = Table(title=f"{args.deit}: ms per run by op type after ORT's optimizer, batch {max(batches)} (calls)")
    prof.add_column("op type")
    for label in pair:
        prof.add_column(label, justify="right")
    for row in compared:
        prof.add_row(row["op"], *(f"{row[lb]['ms_per_run']:.1f} ({row[lb]['calls_per_run']:g})" if row[lb] else "-"
                                  for lb in pair))
    console.print(prof)
    for key, f in fusions.items():
        fused = ", ".join(f"{op} {n}" for op, n in f["fused"].items()) or "none"
        console.print(f"{key}: fused {fused}" + (f" [red]({'; '.join(f['problems'])})[/]" if f["problems"] else ""))
    for k, v in ratios.items():
        each = [r[k] for r in ratio_repeats]
        spread = f" (median of {len(each)} repeats: {', '.join(f'{x:.3f}' for x in sorted(each))})" if len(each) > 1 else ""
        console.print(f"{k}: {v:.3f}{spread}")
    console.print(f"ours vs timm outputs (same weights): rel L2 {parity:.2e}; load average at the end "
                  f"{' '.join(f'{v:.2f}' for v in env['loadavg_end'])}")
    result = {"environment": env, "settings": {k: v for k, v in vars(args).items() if k != "json"},
              "rows": rows, "ratios": ratios,
              "ratios_per_repeat": {k: [r[k] for r in ratio_repeats] for k in ratios},
              "ours_vs_timm_rel_l2": parity,
              "also": {label: {"path": str(path), "sha256": sha256_file(path), "vs_timm_rel_l2": also_parity[label]}
                       for label, path in also},
              "profile_batch": max(batches), "profile_side_by_side": compared, "profiles": profiles,
              "fusions": fusions}
    suffix = (f"_threads{args.threads}" if args.threads else "") + ("_cputime" if args.clock == "thread" else "")
    write_json(args.json or RESULTS / f"onnx_cpu_{cpu_slug(env['cpu_model'])}{suffix}.json", result, say=console.print)
    return result


if __name__ == "__main__":
    main()
