"""Triton serving on this machine: dynamic batching on vs off, and Triton vs the in-process ``Batcher``.

For each model (the demo model and ``psvit_2d_tiny``, exported to ONNX in a temporary folder unless
``--onnx`` names files): two ``psvit-export serve`` processes on loopback (dynamic batching on, off), then
per concurrency level (1/4/16/64), in rotating order, a closed-loop sweep of each: Triton with batching
(``psvit.serve.loadgen``, HTTP), Triton without, and the in-process path (``c`` threads submitting to a
``psvit.runtime.Batcher`` over a ``Runtime`` of the same file). Every Triton response is checked against
``Runtime.infer`` of the same rows. Reports throughput and p50/p99 per level, batching's throughput gain
(on / off) and Triton's cost as a ratio (Batcher throughput / Triton throughput); JSON + plot. Not a test::

    .venv/bin/python benchmarks/triton_serving.py --json benchmarks/results/triton_serving.json \\
        --plot benchmarks/results/triton_serving.png
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by file path (tests)
from _common import write_json  # noqa: E402

MODES = ("triton_batching", "triton_no_batching", "batcher")


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Server:
    """``psvit-export serve`` on free loopback ports; ready when its ``--json`` line arrives (bounded)."""

    def __init__(self, onnx: Path, *extra: str, log: Path) -> None:
        self.http_port, grpc, metrics = _free_ports(3)
        self._err = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "psvit.cli", "serve", str(onnx), "--host", "127.0.0.1", "--http-port",
             str(self.http_port), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--json",
             "--log-file", str(log.with_suffix(".triton.log")), *extra],
            stdout=subprocess.PIPE, stderr=self._err, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout] + [lines.put(None)],
                         daemon=True).start()
        deadline = time.monotonic() + 300
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            if line is None:
                raise RuntimeError(f"serve exited: {log.read_text()[-2000:]}")
            if line.startswith("{"):
                self.info = json.loads(line)
                return

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        finally:
            self._err.close()


def batcher_level(rt: Any, concurrency: int, requests: int, pool: np.ndarray, max_batch: int,
                  max_delay_ms: float) -> dict[str, Any]:
    """Closed loop in this process: ``concurrency`` threads, one image each in flight on a Batcher."""
    from psvit.runtime import Batcher
    from psvit.runtime.profiler import latency_stats

    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    with Batcher(rt, max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=4 * concurrency) as batcher:
        for i in range(concurrency):  # warm-up, as the load generator does
            batcher.submit(pool[i % len(pool)], timeout=None).result(timeout=120)

        def worker() -> None:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                batcher.submit(pool[i % len(pool)], timeout=None).result(timeout=120)
                latencies.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        seconds = time.perf_counter() - t0
        sizes = dict(batcher.batch_sizes)
    s = latency_stats(latencies, 1)
    calls = sum(sizes.values())
    return {"concurrency": concurrency, "requests": len(latencies), "errors": 0, "inferences": len(latencies),
            "seconds": seconds, "throughput": len(latencies) / seconds,
            "latency": {"mean_ms": s.mean_ms, "p50_ms": s.median_ms, "p90_ms": s.p90_ms, "p95_ms": s.p95_ms,
                        "p99_ms": s.p99_ms, "min_ms": s.min_ms, "max_ms": s.max_ms},
            "server": {"avg_batch": sum(k * v for k, v in sizes.items()) / calls if calls else 0.0}}


def measure_model(label: str, onnx: Path, levels: list[int], requests: int, max_batch: int, delay_ms: float,
                  work: Path) -> dict[str, Any]:
    from psvit.runtime import load
    from psvit.serve.loadgen import input_pool, run_loadtest

    common = ("--max-batch", str(max_batch), "--max-queue-delay-ms", str(delay_ms))
    servers = {"triton_batching": Server(onnx, *common, log=work / f"{label}-on.log"),
               "triton_no_batching": Server(onnx, *common, "--no-dynamic-batching", log=work / f"{label}-off.log")}
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    try:
        with load(onnx) as rt:
            pool = input_pool(rt.input_shape, 16, seed=0)
            for r, c in enumerate(levels):
                n = max(requests, 3 * c)
                order = MODES[r % 3:] + MODES[:r % 3]  # rotate, so drifting background load hits all modes
                for mode in order:
                    if mode == "batcher":
                        results[mode].append(batcher_level(rt, c, n, pool, max_batch, delay_ms))
                    else:
                        rep = run_loadtest(servers[mode].url, concurrency=[c], requests=n, reference=rt)
                        results[mode].append(rep.levels[0].to_dict())
                    lv = results[mode][-1]
                    print(f"{label} c={c:<3} {mode:<19} {lv['throughput']:8.1f} infer/s  p50 "
                          f"{lv['latency']['p50_ms']:7.2f} ms  p99 {lv['latency']['p99_ms']:7.2f} ms  avg batch "
                          f"{lv['server'].get('avg_batch', 0):.1f}", flush=True)
    finally:
        codes = {m: s.stop() for m, s in servers.items()}
    ratios = []
    for i, c in enumerate(levels):
        on, off, b = (results[m][i] for m in MODES)
        ratios.append({"concurrency": c, "batching_gain": on["throughput"] / off["throughput"],
                       "batcher_over_triton": b["throughput"] / on["throughput"],
                       "p50_triton_over_batcher": on["latency"]["p50_ms"] / b["latency"]["p50_ms"],
                       "mismatches": on.get("mismatches", 0) + off.get("mismatches", 0)})
    return {"onnx": str(onnx), "levels": results, "ratios": ratios, "server_exit_codes": codes}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo,psvit_2d_tiny", help="models to export and serve")
    parser.add_argument("--onnx", type=Path, nargs="*", default=None, help="serve these ONNX files instead")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=300, help="requests per level and mode (at least 3x c)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-queue-delay-ms", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    from psvit.runtime.bench import machine_info
    from psvit.serve.loadgen import parse_concurrency

    levels = parse_concurrency(args.concurrency)
    load_start = os.getloadavg()
    out: dict[str, Any] = {"settings": vars(args) | {"json": str(args.json), "plot": str(args.plot),
                                                     "onnx": [str(p) for p in args.onnx or []]}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="psvit-triton-bench-") as tmp:
        work = Path(tmp)
        if args.onnx:
            onnx_files = {p.stem: p for p in args.onnx}
        else:
            from psvit.export import export_onnx

            onnx_files = {}
            for name in args.models.split(","):
                onnx_files[name] = work / f"{name}.onnx"
                print(f"exporting {name} ...", flush=True)
                export_onnx(name, onnx_files[name], count=2)
        for label, path in onnx_files.items():
            out["models"][label] = measure_model(label, path, levels, args.requests, args.max_batch,
                                                 args.max_queue_delay_ms, work)
    out["machine"] = {**machine_info(), "loadavg_start": list(load_start), "loadavg_end": list(os.getloadavg())}
    print(f"\n{'model':<15} {'c':>3} {'batching on/off':>16} {'Batcher/Triton':>15} {'p50 Triton/Batcher':>19}")
    for label, m in out["models"].items():
        for r in m["ratios"]:
            print(f"{label:<15} {r['concurrency']:>3} {r['batching_gain']:>15.2f}x {r['batcher_over_triton']:>14.2f}x "
                  f"{r['p50_triton_over_batcher']:>18.2f}x")
    print(f"CPU {out['machine']['processor']}, load average {load_start} -> {out['machine']['loadavg_end']}")
    write_json(args.json, out)
    if args.plot is not None:
        from psvit.serve.plots import plot_panels

        names = {"triton_batching": "Triton, dynamic batching", "triton_no_batching": "Triton, no batching",
                 "batcher": "in-process Batcher"}
        plot_panels([(f"{label} (ONNX Runtime CPU, {out['machine']['cpu_count']} CPUs)",
                      [(names[mode], m["levels"][mode]) for mode in MODES]) for label, m in out["models"].items()],
                    args.plot)
        print(f"wrote {args.plot}")
    return out


if __name__ == "__main__":
    main()
