"""GPU latency of PSViT variants and their DeiT counterparts through ``psvit.runtime`` (for the lent GPU).

Rows: each variant x precision (fp32, fp16) x batch (1, 32, 256) on PyTorch eager, PyTorch + CUDA graphs
and ONNX Runtime CUDA EP (IO binding; a second ORT row with ``enable_cuda_graph``). Random weights
(latency does not depend on them). Also checks, per exported graph, that ORT CUDA places no Memcpy nodes
(read from ORT's optimized model) and that ``enable_cuda_graph`` runs and reproduces the plain outputs.
Prints a table titled with the GPU name and writes JSON. A time budget (default 270 s) skips the rows
left when it runs out, saying so, so one device call of 5 minutes always returns results.

On the lent GPU machine (no venv; onnxruntime-gpu carried per ../shared/device/stage-ort-gpu)::

    python3 /tmp/ortgpu/assemble.py && export PYTHONPATH=/tmp/ortgpu/site:$PYTHONPATH &&
    python3 benchmarks/gpu_latency.py --json $OUT/gpu_latency.json

Without onnxruntime-gpu the ORT rows are skipped with the reason. ``--dry-run`` runs the same code on the
CPU with tiny settings (psvit_micro, batch 1 and 2, two iterations, ORT CPU) — what CI can check.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by file path (tests)
from _common import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("psvit_2d_tiny", "deit_tiny", "psvit_2d_small", "deit_small")
MEMCPY_OPS = ("MemcpyToHost", "MemcpyFromHost")


def bootstrap() -> None:
    """Import psvit from the checkout when it is not installed (the device machine has no venv)."""
    try:
        import psvit.runtime  # noqa: F401
        return
    except ImportError:
        pass
    sys.path.insert(0, str(ROOT))
    import psvit

    for sub, folder in (("export", "export"), ("calibration", "calibration"), ("runtime", "runtime")):
        name = f"psvit.{sub}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, ROOT / folder / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        setattr(psvit, sub, module)
        spec.loader.exec_module(module)


def memcpy_nodes(optimized: Path) -> int:
    """Memcpy nodes ORT inserted between providers (counted in the optimized model it saved)."""
    import onnx

    model = onnx.load(str(optimized), load_external_data=False)
    return sum(n.op_type in MEMCPY_OPS for n in model.graph.node)


def ort_checks(onnx_path: Path, device: str, tmp: Path) -> dict[str, Any]:
    """Memcpy count on the execution provider, and whether ``enable_cuda_graph`` runs and agrees."""
    import numpy as np

    from psvit.runtime import load

    out: dict[str, Any] = {}
    optimized = tmp / f"{onnx_path.stem}.optimized.onnx"
    rt = load(onnx_path, device=device, optimized_model_path=optimized)
    x = np.random.default_rng(0).standard_normal((2, *rt.input_shape), dtype=np.float32)
    plain = rt.infer(x)
    out["providers"] = rt.backend.providers
    out["memcpy_nodes"] = memcpy_nodes(optimized)
    if device.startswith("cuda"):
        try:
            graph_rt = load(onnx_path, device=device, cuda_graphs=True)
            for _ in range(3):  # first run captures, later ones replay
                got = graph_rt.infer(x)
            out["cuda_graph"] = {"ok": True, "max_abs_diff": float(np.abs(got - plain).max())}
        except Exception as exc:  # noqa: BLE001 - recorded as the finding
            out["cuda_graph"] = {"ok": False, "error": str(exc).splitlines()[0][:300]}
    return out


def row(variant: str, precision: str, backend: str, batch: int, stats: dict[str, Any]) -> dict[str, Any]:
    e2e, comp = stats["end_to_end"], stats.get("compute")
    return {"variant": variant, "precision": precision, "backend": backend, "batch": batch,
            "median_ms": e2e.median_ms, "p90_ms": e2e.p90_ms, "cv": e2e.cv, "throughput": e2e.throughput,
            "compute_median_ms": comp.median_ms if comp else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", default="10")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds; rows left after it are skipped")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="CPU, psvit_micro, batch 1/2, 2 iterations")
    args = parser.parse_args(argv)
    bootstrap()
    import torch

    from psvit.export import export_onnx
    from psvit.runtime import load, profile_runtime
    from psvit.runtime.bench import machine_info

    if args.dry_run:
        variants, batches, precisions, iters, warmup, device = ["psvit_micro"], [1, 2], ["fp32"], 2, "1", "cpu"
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA GPU visible; use --dry-run on a CPU machine")
        variants = [v for v in args.variants.split(",") if v]
        batches = [int(b) for b in args.batches.split(",")]
        precisions = [p for p in args.precisions.split(",") if p]
        iters, warmup, device = args.iters, args.warmup, "cuda"
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    skipped: list[str] = []
    try:
        import onnxruntime as ort

        ort_ok = device == "cpu" or "CUDAExecutionProvider" in ort.get_available_providers()
        if not ort_ok:
            skipped.append(f"ONNX Runtime CUDA rows: onnxruntime {ort.__version__} has no CUDA provider "
                           f"(carry onnxruntime-gpu, see the docstring)")
    except ImportError:
        ort_ok = False
        skipped.append("ONNX Runtime rows: onnxruntime is not installed")

    def over_budget(what: str) -> bool:
        if time.perf_counter() - start > args.budget:
            skipped.append(f"{what}: time budget of {args.budget:.0f} s spent")
            return True
        return False

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for variant in variants:
            for precision in precisions:
                torch_modes = [("torch eager", {})]
                if device == "cuda":
                    torch_modes.append(("torch cuda graph", {"cuda_graphs": True}))
                for label, opts in torch_modes:
                    if over_budget(f"{variant} {precision} {label}"):
                        continue
                    with load(variant, device=device, precision=precision, **opts) as rt:
                        for b in batches:
                            rows.append(row(variant, precision, label, b,
                                            profile_runtime(rt, b, warmup=warmup, iters=iters, preprocess=False)))
                if not ort_ok or over_budget(f"{variant} {precision} onnxruntime"):
                    continue
                onnx_path = tmp / f"{variant}.{precision}.onnx"
                export_onnx(variant, onnx_path, fp16=precision == "fp16", count=2)
                checks[onnx_path.name] = ort_checks(onnx_path, device, tmp)
                ort_modes = [("ort " + device, {})]
                if device == "cuda" and checks[onnx_path.name].get("cuda_graph", {}).get("ok"):
                    ort_modes.append(("ort cuda graph", {"cuda_graphs": True}))
                for label, opts in ort_modes:
                    with load(onnx_path, device=device, **opts) as rt:
                        for b in batches:
                            rows.append(row(variant, precision, label, b,
                                            profile_runtime(rt, b, warmup=warmup, iters=iters, preprocess=False)))
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (dry run)"
    print(f"latency on {gpu}: median end-to-end ms (compute ms), images/s")
    print(f"{'variant':<16}{'prec':<6}{'backend':<18}{'batch':>6}{'median':>10}{'compute':>10}{'p90':>10}{'img/s':>11}")
    for r in rows:
        comp = f"{r['compute_median_ms']:.3f}" if r["compute_median_ms"] is not None else "-"
        print(f"{r['variant']:<16}{r['precision']:<6}{r['backend']:<18}{r['batch']:>6}{r['median_ms']:>10.3f}"
              f"{comp:>10}{r['p90_ms']:>10.3f}{r['throughput']:>11.0f}")
    for name, c in checks.items():
        graph = c.get("cuda_graph")
        graph_text = "" if graph is None else (f", enable_cuda_graph ok (max diff {graph['max_abs_diff']:.2e})"
                                               if graph["ok"] else f", enable_cuda_graph FAILED: {graph['error']}")
        print(f"{name}: {c['memcpy_nodes']} Memcpy nodes on {c['providers'][0]}{graph_text}")
    for s in skipped:
        print(f"skipped: {s}")
    result = {"gpu": gpu, "dry_run": args.dry_run, "machine": machine_info(), "torch": torch.__version__,
              "settings": {"variants": variants, "batches": batches, "precisions": precisions, "iters": iters,
                           "warmup": warmup}, "rows": rows, "ort_checks": checks, "skipped": skipped,
              "seconds": time.perf_counter() - start}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
