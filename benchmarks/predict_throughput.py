"""Images/s of ``psvit-export predict`` over a folder of JPEGs: loader workers pipelined with inference vs
decoding then inferring in one thread vs a plain Python loop over ``Runtime.predict``; and Ray Data with
2 actors vs one process on the same machine.

Images: synthetic scenes (``psvit.data.synthetic``) upscaled to ``--source-size`` px (400, about the
average ImageNet photo) and saved as JPEG (quality 90), so decoding and resizing cost what real photos
cost. Models: the bundled demo model (32 px input) and ``psvit_2d_tiny`` (224 px, random weights), both
exported to ONNX and run on ONNX Runtime CPU. Per model, the local modes run in interleaved rounds (order
rotated each round) so background load hits them alike; the median images/s per mode is reported, with
ratios measured in the same run. The Ray rows run once per model (a local cluster is started for them,
outside the timed pipeline; its start-up is reported separately). The JSON records the CPU and the load
average before and after. Not a test: it asserts nothing. Usage::

    .venv/bin/python benchmarks/predict_throughput.py --json benchmarks/results/predict_throughput.json
    .venv/bin/python benchmarks/predict_throughput.py --quick          # smoke run: demo model, 48 images
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by file path (tests)
from _common import write_json  # noqa: E402

MODELS = {"demo": "demo", "psvit_2d_tiny": "psvit_2d_tiny"}


def write_jpegs(folder: Path, count: int, size: int, seed: int = 0) -> list[str]:
    """``count`` synthetic scenes as ``size`` px JPEGs (generated at 64 px, upscaled, with pixel noise)."""
    from PIL import Image

    from psvit.data.synthetic import generate_image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        small, _ = generate_image(seed, i, 64)
        big = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
        big = np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)  # texture, as photos have
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(big).save(path, quality=90)
        paths.append(str(path))
    return paths


def export(model: str, folder: Path) -> Path:
    from psvit.export import export_onnx

    path = folder / f"{model}.onnx"
    export_onnx(model, path, count=2)
    return path


def run_loop(rt: Any, paths: list[str], topk: int) -> tuple[int, float, dict]:
    """A plain Python loop: ``Runtime.predict`` on one path at a time."""
    t0 = time.perf_counter()
    for p in paths:
        rt.predict([p], topk=topk)
    seconds = time.perf_counter() - t0
    return len(paths), seconds, {"steady_images_per_s": len(paths) / seconds}


def run_stream(rt: Any, paths: list[str], topk: int, batch: int, workers: int) -> tuple[int, float, dict]:
    from psvit.runtime.file_predict import PredictionStream

    t0 = time.perf_counter()
    with PredictionStream(rt, paths, topk=topk, batch=batch, loader_workers=workers) as stream:
        n = sum(1 for _ in stream)
    return n, time.perf_counter() - t0, stream.stats.to_dict()


def run_ray(onnx: Path, paths: list[str], topk: int, batch: int, actors: int, cpus: int,
            threads: int | None) -> dict[str, Any]:
    from psvit.runtime.ray_predict import RayPredictionStream, RaySettings

    t0 = time.perf_counter()
    options = {"threads": threads} if threads else {}
    settings = RaySettings(actors=actors, local_cpus=cpus)
    with RayPredictionStream(onnx, paths, topk=topk, batch=batch, options=options, settings=settings) as stream:
        n = sum(1 for _ in stream)
    total = time.perf_counter() - t0
    s = stream.stats
    return {"images": n, "startup_s": stream.startup_s, "pipeline_s": s.wall_s, "total_s": total,
            "images_per_s": n / s.wall_s, "first_result_s": s.first_result_s, "stats": s.to_dict(),
            "cluster": stream.cluster}  # no steady rate: the other actors work while the first batch is awaited


def measure_model(name: str, onnx: Path, paths: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from psvit.runtime import load

    from psvit.runtime.file_predict import throughput_options

    options = {"threads": args.threads} if args.threads else {}
    rt = load(onnx, **throughput_options(onnx, options))  # as psvit-export predict loads it
    modes: dict[str, Any] = {"loop over Runtime.predict (1 image/call)": lambda: run_loop(rt, paths, args.topk)}
    modes[f"decode then infer, one thread (batch {args.batch})"] = (
        lambda: run_stream(rt, paths, args.topk, args.batch, 0))
    for w in args.workers:
        modes[f"pipelined, {w} loader worker{'s' if w > 1 else ''} (batch {args.batch})"] = (
            lambda w=w: run_stream(rt, paths, args.topk, args.batch, w))
    spinning = None
    if args.spinning_row and args.workers:
        spinning = load(onnx, **options)  # ORT's default: intra-op threads spin between operators
        w = max(args.workers)
        modes[f"pipelined, {w} workers, ORT spinning (ORT default)"] = (
            lambda: run_stream(spinning, paths, args.topk, args.batch, w))
    run_stream(rt, paths[: args.batch], args.topk, args.batch, 0)  # warm-up: first ORT runs, file cache
    rates: dict[str, list[float]] = {m: [] for m in modes}
    steady: dict[str, list[float]] = {m: [] for m in modes}
    last_stats: dict[str, dict] = {}
    order = list(modes)
    for r in range(args.rounds):
        for label in order[r % len(order):] + order[: r % len(order)]:
            n, seconds, stats = modes[label]()
            rates[label].append(n / seconds)
            steady[label].append(stats["steady_images_per_s"])
            last_stats[label] = stats
            print(f"  {name} round {r + 1}: {label}: {n / seconds:,.1f} img/s "
                  f"({stats['steady_images_per_s']:,.1f} after the first batch)", flush=True)
    rt.close()
    if spinning is not None:
        spinning.close()
    rows = [{"mode": m, "images_per_s": statistics.median(v), "steady_images_per_s": statistics.median(steady[m]),
             "rounds": v, "stats": last_stats[m]} for m, v in rates.items()]
    seq = rows[1]["images_per_s"]
    loop = rows[0]["images_per_s"]
    for row in rows:
        row["x_one_thread"] = row["images_per_s"] / seq
        row["x_loop"] = row["images_per_s"] / loop
        row["steady_x_one_thread"] = row["steady_images_per_s"] / rows[1]["steady_images_per_s"]
    result: dict[str, Any] = {"model": name, "onnx": onnx.name, "images": len(paths), "rows": rows}
    if args.ray:
        print(f"  {name}: Ray Data, {args.ray_actors} actors on a local {args.ray_cpus}-CPU cluster ...", flush=True)
        ray = run_ray(onnx, paths, args.topk, args.batch, args.ray_actors, args.ray_cpus, args.threads)
        best_local = max(rows[1:], key=lambda r: r["images_per_s"])
        ray["vs_single_process"] = {"single_process_mode": best_local["mode"],
                                    "pipeline_ratio": ray["images_per_s"] / best_local["images_per_s"],
                                    "with_startup_ratio": (len(paths) / ray["total_s"]) / best_local["images_per_s"]}
        result["ray"] = ray
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"\n{'model':<15}{'mode':<52}{'img/s':>9}{'x 1 thread':>12}{'x loop':>9}{'steady':>9}{'x 1 thread':>12}")
    for res in results:
        for row in res["rows"]:
            print(f"{res['model']:<15}{row['mode']:<52}{row['images_per_s']:>9,.1f}{row['x_one_thread']:>11.2f}x"
                  f"{row['x_loop']:>8.2f}x{row['steady_images_per_s']:>9,.1f}{row['steady_x_one_thread']:>11.2f}x")
        if "ray" in res:
            r = res["ray"]
            v = r["vs_single_process"]
            print(f"{res['model']:<15}{'Ray Data, ' + str(r['cluster']['actors']) + ' actors (pipeline only)':<52}"
                  f"{r['images_per_s']:>9,.1f}  {v['pipeline_ratio']:.2f}x of the best single-process mode "
                  f"(first result after {r['first_result_s']:.1f} s: actors starting); with the cluster's "
                  f"start-up ({r['startup_s']:.1f} s) {v['with_startup_ratio']:.2f}x")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="demo,psvit_2d_tiny", help="comma-separated: demo, psvit_2d_tiny")
    parser.add_argument("--images", type=int, default=384, help="JPEG files per run")
    parser.add_argument("--source-size", type=int, default=400, help="side of the JPEGs in pixels")
    parser.add_argument("--demo-repeat", type=int, default=4, help="the demo model goes over the files this often")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the local modes")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--workers", default="1,2", help="loader worker counts of the pipelined rows")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    parser.add_argument("--spinning-row", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the most loader workers with ORT's spinning threads (its default)")
    parser.add_argument("--ray", action=argparse.BooleanOptionalAction, default=True,
                        help="also run Ray Data on a local cluster (needs ray[data])")
    parser.add_argument("--ray-actors", type=int, default=2)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: demo only, 48 images, 1 round, no Ray")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.rounds, args.ray, args.source_size, args.spinning_row = "demo", 1, False, 128, False
        args.demo_repeat = 1
        args.images = min(args.images, 48)
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")

    from psvit.runtime.bench import machine_info

    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        print(f"writing {args.images} JPEGs of {args.source_size} px ...", flush=True)
        paths = write_jpegs(Path(tmp) / "images", args.images, args.source_size)
        for name in models:
            print(f"exporting {name} to ONNX ...", flush=True)
            onnx = export(MODELS[name], Path(tmp))
            repeat = args.demo_repeat if name == "demo" else 1  # the fast model: a longer run, start-up amortised
            results.append(measure_model(name, onnx, paths * repeat, args))
    print_table(results)
    out = {"machine": machine_info(), "load_average": {"before": load_before, "after": os.getloadavg()},
           "settings": {k: v for k, v in vars(args).items() if k != "json"}, "results": results}
    print(f"load average before {load_before[0]:.2f}, after {out['load_average']['after'][0]:.2f} (1 min)")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
