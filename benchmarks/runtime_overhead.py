"""Overhead of ``psvit.runtime`` over a bare ONNX Runtime ``session.run`` on the same session.

Batch 1 (where per-call overhead matters most), ORT CPU, the bundled demo model (exported to a temporary
folder unless ``--onnx`` is given). Both paths call the very same ``InferenceSession``; timed in
interleaved rounds (bare, runtime, bare, ...) so background load on a shared CPU hits both alike. Reports
the median per round, the overhead in microseconds and percent (target: within 5%), prints a table and
writes JSON. Not a test: it asserts nothing. Usage::

    .venv/bin/python benchmarks/runtime_overhead.py [--onnx model.onnx] [--rounds 7] [--iters 300] [--json out.json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by file path (tests)
from _common import time_calls, write_json  # noqa: E402


def measure(onnx_path: Path, *, batch: int, rounds: int, iters: int, threads: int | None) -> dict[str, Any]:
    from psvit.runtime import load

    rt = load(onnx_path, threads=threads)
    session = rt.backend.session
    name = rt.backend.input_name
    x = np.random.default_rng(0).standard_normal((batch, *rt.input_shape), dtype=np.float32)
    bare = lambda: session.run(None, {name: x})  # noqa: E731
    wrapped = lambda: rt.infer(x)  # noqa: E731
    np.testing.assert_allclose(wrapped(), bare()[0], rtol=0, atol=0)  # same session, same numbers
    for fn in (bare, wrapped):
        time_calls(fn, max(iters // 5, 10))  # warm-up
    medians: dict[str, list[float]] = {"bare session.run": [], "runtime infer": []}
    for r in range(rounds):
        order = [("bare session.run", bare), ("runtime infer", wrapped)]
        for label, fn in order if r % 2 == 0 else order[::-1]:
            medians[label].append(statistics.median(time_calls(fn, iters)))
    bare_ms = statistics.median(medians["bare session.run"]) * 1e3
    rt_ms = statistics.median(medians["runtime infer"]) * 1e3
    return {
        "onnx": str(onnx_path), "batch": batch, "rounds": rounds, "iters_per_round": iters, "threads": threads,
        "bare_ms": bare_ms, "runtime_ms": rt_ms, "overhead_us": (rt_ms - bare_ms) * 1e3,
        "overhead_pct": 100.0 * (rt_ms - bare_ms) / bare_ms, "target_pct": 5.0,
        "round_medians_ms": {k: [v * 1e3 for v in vs] for k, vs in medians.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, help="ONNX file (default: the demo model, exported to a temp folder)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=300, help="calls per round and path")
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)

    from psvit.runtime.bench import machine_info

    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx
        if path is None:
            from psvit.export import export_onnx

            path = Path(tmp) / "demo.onnx"
            export_onnx("demo", path)
        result = measure(path, batch=args.batch, rounds=args.rounds, iters=args.iters, threads=args.threads)
    result["machine"] = machine_info()
    print(f"{'path':<20}{'median ms':>12}")
    print(f"{'bare session.run':<20}{result['bare_ms']:>12.4f}")
    print(f"{'runtime infer':<20}{result['runtime_ms']:>12.4f}")
    verdict = "within" if result["overhead_pct"] <= 5.0 else "ABOVE"
    print(f"overhead: {result['overhead_us']:+.1f} us ({result['overhead_pct']:+.2f}%), {verdict} the 5% target "
          f"(batch {result['batch']}, {result['rounds']} rounds x {result['iters_per_round']} calls)")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
