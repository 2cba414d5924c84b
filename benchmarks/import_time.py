"""Start-up cost of the runtime: ``import psvit.runtime``, then loading an ONNX file or a checkpoint, each in
a fresh interpreter (not a test: prints a table and writes JSON).

Rows are timed interleaved (one fresh process per row per round) so that load from other processes hits them
alike; ``import torch`` alone is the reference (what ``import psvit`` cost before it became lazy). Each row also
records whether torch and onnx ended up in ``sys.modules``. Usage::

    .venv/bin/python benchmarks/import_time.py [--rounds 10] [--json out/import_time.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by file path (tests)
from _common import stats_ms, write_json  # noqa: E402

PROBE = """
import json, sys, time
t0 = time.perf_counter()
{code}
print(json.dumps({{"s": time.perf_counter() - t0, "torch": "torch" in sys.modules, "onnx": "onnx" in sys.modules}}))
"""
ROWS = {
    "import torch (reference)": "import torch",
    "import psvit.runtime": "import psvit.runtime",
    "import psvit.runtime; load(ONNX)": "import psvit.runtime; psvit.runtime.load({onnx!r})",
    "import psvit.runtime; load('demo')": "import psvit.runtime; psvit.runtime.load('demo')",
}


def run_once(code: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(code=code)], capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from psvit.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "demo.onnx"
        export_onnx("demo", onnx_path, count=2)
        codes = {label: code.format(onnx=str(onnx_path)) for label, code in ROWS.items()}
        samples: dict[str, list[dict[str, Any]]] = {label: [] for label in codes}
        for r in range(args.rounds):
            order = list(codes) if r % 2 == 0 else list(codes)[::-1]
            for label in order:
                samples[label].append(run_once(codes[label]))
    rows = []
    for label, runs in samples.items():
        s = stats_ms([x["s"] * 1e3 for x in runs])
        rows.append({"row": label, "median_ms": s.median_ms, "p90_ms": s.p90_ms, "min_ms": s.min_ms,
                     "torch_loaded": runs[-1]["torch"], "onnx_loaded": runs[-1]["onnx"], "runs": len(runs)})
    print(f"{'':<40}{'median ms':>10}{'p90 ms':>10}{'torch':>7}{'onnx':>6}")
    for r in rows:
        print(f"{r['row']:<40}{r['median_ms']:>10.0f}{r['p90_ms']:>10.0f}{str(r['torch_loaded']):>7}"
              f"{str(r['onnx_loaded']):>6}")
    result = {"rows": rows, "rounds": args.rounds, "loadavg": os.getloadavg(), "cpus": os.cpu_count()}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
