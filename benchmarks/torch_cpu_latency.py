"""PyTorch CPU forward latency of the PSViT variants next to their DeiT counterparts, and of attention
sharing on vs off.

Every model is built in eval mode with the default (fused attention) build and run under
``torch.inference_mode``. Method (as nanoGPT's bench and trtexec): warm up each model for at least
``--warmup`` iterations and ``--warmup-time`` seconds, then time ``--iters`` forwards with
``time.perf_counter``. By default the timed iterations are interleaved (one forward of every model per
round, the order rotated each round), so background load and thermal drift hit all rows alike and the
ratios stay meaningful on a shared machine; ``--sequential`` times each model's iterations back to back.

    python benchmarks/torch_cpu_latency.py --quick
    python benchmarks/torch_cpu_latency.py --batch 1,16 --threads 8 --json cpu_latency.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import psvit
from psvit.runtime.bench import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when loaded by file path (tests)
from _common import stats_ms, write_json  # noqa: E402

DEFAULT_VARIANTS = (
    "psvit_2d_tiny", "psvit_1d_tiny", "deit_tiny", "psvit_2d_small", "psvit_1d_small", "deit_small",
)
DEFAULT_SHARE_OFF = ("psvit_2d_tiny", "psvit_1d_tiny")
DEFAULTS = {"iters": 30, "warmup": 5, "warmup_time": 1.0}
QUICK = {"iters": 3, "warmup": 1, "warmup_time": 0.0}


@dataclass(frozen=True)
class Entry:
    """One model to time: a variant, optionally with attention sharing switched off."""

    variant: str
    share_off: bool = False

    @property
    def label(self) -> str:
        return f"{self.variant} (share off)" if self.share_off else self.variant

    @property
    def overrides(self) -> dict[str, Any]:
        return {"share": ()} if self.share_off else {}


@dataclass
class Result:
    """Timings of one entry at one batch size; latencies in milliseconds, ratios are latency ratios."""

    label: str
    variant: str
    share: bool
    batch: int
    params: int
    gmacs: float  # per image, analytic (psvit.model_stats)
    iters: int
    warmup_iters: int
    median_ms: float
    mean_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    cv: float  # std / mean
    images_per_s: float  # batch / median
    vs_deit: float | None = None  # median / median of the DeiT counterpart
    deit: str | None = None
    share_on_vs_off: float | None = None  # median (share on) / median (share off)
    times_ms: list[float] = field(default_factory=list)


def deit_counterpart(variant: str) -> str | None:
    """deit_tiny for *_tiny variants, deit_small for *_small; None for DeiT itself and other variants."""
    if variant.startswith("deit_"):
        return None
    for size in ("tiny", "small"):
        if variant.endswith(f"_{size}"):
            return f"deit_{size}"
    return None


def environment() -> dict[str, Any]:
    """What the numbers depend on: versions, threads, CPU, load, date."""
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "psvit": psvit.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    if hasattr(os, "sched_getaffinity"):
        env["usable_cpus"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        env["loadavg_start"] = list(os.getloadavg())
    return env


def build(entry: Entry) -> torch.nn.Module:
    """The entry's model: eval mode, default build (fused attention)."""
    torch.manual_seed(0)
    return psvit.create_model(entry.variant, **entry.overrides).eval()


def forward_s(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward (CPU: the call returns when the result is computed)."""
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def warm_up(model: torch.nn.Module, x: torch.Tensor, iters: int, seconds: float) -> int:
    """Run at least ``iters`` forwards and at least ``seconds``; returns how many ran."""
    n, t0 = 0, time.perf_counter()
    while n < iters or time.perf_counter() - t0 < seconds:
        model(x)
        n += 1
    return n


def time_batch(
    entries: Sequence[Entry],
    models: dict[Entry, torch.nn.Module],
    batch: int,
    iters: int,
    warmup: int,
    warmup_time: float,
    interleaved: bool,
) -> tuple[dict[Entry, list[float]], dict[Entry, int]]:
    """Per-iteration latencies (ms) of every entry at ``batch``, and the warm-up counts."""
    inputs = {}
    for e in entries:
        cfg = models[e].cfg
        g = torch.Generator().manual_seed(0)
        inputs[e] = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=g)  # (B, C, H, W)
    times: dict[Entry, list[float]] = {e: [] for e in entries}
    warmed: dict[Entry, int] = {}
    gc.collect()
    gc.disable()  # as timeit: no collector pauses inside the timed region
    try:
        with torch.inference_mode():
            if interleaved:
                for e in entries:
                    warmed[e] = warm_up(models[e], inputs[e], warmup, warmup_time)
                for i in range(iters):
                    k = i % len(entries)
                    for e in [*entries[k:], *entries[:k]]:  # rotate the order each round
                        times[e].append(forward_s(models[e], inputs[e]) * 1e3)
            else:
                for e in entries:
                    warmed[e] = warm_up(models[e], inputs[e], warmup, warmup_time)
                    times[e] = [forward_s(models[e], inputs[e]) * 1e3 for _ in range(iters)]
    finally:
        gc.enable()
    return times, warmed


def summarise(entry: Entry, batch: int, times_ms: list[float], warmup_iters: int) -> Result:
    stats = psvit.model_stats(entry.variant, **entry.overrides)
    lat = stats_ms(times_ms, batch)
    return Result(
        label=entry.label, variant=entry.variant, share=not entry.share_off and bool(stats.shared_blocks),
        batch=batch, params=stats.params, gmacs=stats.macs / 1e9, iters=len(times_ms), warmup_iters=warmup_iters,
        median_ms=lat.median_ms, mean_ms=lat.mean_ms, p90_ms=lat.p90_ms, min_ms=lat.min_ms, max_ms=lat.max_ms,
        std_ms=lat.std_ms, cv=lat.cv, images_per_s=batch / (lat.median_ms / 1e3),
        times_ms=[round(t, 4) for t in times_ms],
    )


def add_ratios(results: list[Result]) -> None:
    """Fill ``vs_deit`` and ``share_on_vs_off`` from rows of the same batch measured in this run."""
    by_key = {(r.label, r.batch): r for r in results}
    for r in results:
        deit = deit_counterpart(r.variant)
        ref = by_key.get((deit, r.batch)) if deit else None
        if ref is not None:
            r.vs_deit, r.deit = r.median_ms / ref.median_ms, deit
        if r.label == r.variant:
            off = by_key.get((Entry(r.variant, share_off=True).label, r.batch))
            if off is not None:
                r.share_on_vs_off = r.median_ms / off.median_ms
                off.share_on_vs_off = r.share_on_vs_off


LEGEND = (
    "x DeiT: median latency / median latency of the DeiT of the same size (below 1 is faster). "
    "share on/off: median with the variant's sharing / with share=()."
)


def render(rows: list[Result], env: dict[str, Any], console: Console) -> None:
    """One rich table for the rows of one batch size."""
    title = (
        f"batch {rows[0].batch}: PyTorch {env['torch']} CPU forward latency - {env['cpu_model']}, "
        f"{env['torch_threads']} threads (eval, inference_mode, fused attention)"
    )
    table = Table(title=title, title_justify="left")
    for name, justify in [
        ("model", "left"), ("batch", "right"), ("params M", "right"), ("GMACs", "right"),
        ("median ms", "right"), ("mean ms", "right"), ("p90 ms", "right"), ("min ms", "right"),
        ("CV %", "right"), ("img/s", "right"), ("x DeiT", "right"), ("share on/off", "right"),
    ]:
        table.add_column(name, justify=justify)
    for r in rows:
        table.add_row(
            r.label, str(r.batch), f"{r.params / 1e6:.1f}", f"{r.gmacs:.2f}", f"{r.median_ms:.1f}",
            f"{r.mean_ms:.1f}", f"{r.p90_ms:.1f}", f"{r.min_ms:.1f}", f"{100 * r.cv:.1f}",
            f"{r.images_per_s:.1f}", f"{r.vs_deit:.2f}" if r.vs_deit is not None else "-",
            f"{r.share_on_vs_off:.2f}" if r.share_on_vs_off is not None else "-",
        )
    console.print(table)


def parse_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", default="1,16", help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--iters", type=int, help=f"timed iterations per model (default {DEFAULTS['iters']})")
    p.add_argument("--warmup", type=int, help=f"least warm-up iterations (default {DEFAULTS['warmup']})")
    p.add_argument("--warmup-time", type=float, help=f"least warm-up seconds (default {DEFAULTS['warmup_time']})")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated variants to time")
    p.add_argument(
        "--share-off", default=",".join(DEFAULT_SHARE_OFF),
        help="variants also timed with share=() for the sharing on/off ratio ('' for none)",
    )
    p.add_argument(
        "--sequential", action="store_true", help="time each model back to back instead of interleaved rounds"
    )
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write environment and all figures here")
    p.add_argument(
        "--quick", action="store_true",
        help=(
            f"smoke run: {QUICK['iters']} timed iterations, {QUICK['warmup']} warm-up, no warm-up time "
            f"(explicit --iters/--warmup/--warmup-time still win)"
        ),
    )
    args = p.parse_args(argv)

    defaults = QUICK if args.quick else DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.batch = [int(b) for b in parse_list(args.batch)]
    except ValueError:
        p.error(f"--batch takes comma-separated integers, e.g. 1,16; got {args.batch!r}")
    if not args.batch or any(b < 1 for b in args.batch):
        p.error("--batch needs at least one batch size >= 1")
    if args.iters < 1 or args.warmup < 0 or args.warmup_time < 0:
        p.error("--iters must be >= 1, --warmup and --warmup-time >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    args.variants = parse_list(args.variants)
    args.share_off = parse_list(args.share_off)
    known = set(psvit.list_models())
    for name in [*args.variants, *args.share_off]:
        if name not in known:
            p.error(str(psvit.registry.unknown_variant(name)))
    for name in args.share_off:
        if not psvit.get_config(name).share:
            p.error(f"--share-off {name}: this variant shares no attention maps, so on/off is the same model")
    if not args.variants and not args.share_off:
        p.error("nothing to time: --variants and --share-off are both empty")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 160)  # a log file gets the whole table
    env = environment()

    entries = [Entry(v) for v in args.variants] + [Entry(v, share_off=True) for v in args.share_off]
    entries = list(dict.fromkeys(entries))  # drop repeats, keep the order
    models = {e: build(e) for e in entries}
    results: list[Result] = []
    t_start = time.perf_counter()
    for batch in args.batch:
        with console.status(f"batch {batch}: timing {len(entries)} models x {args.iters} iterations"):
            times, warmed = time_batch(
                entries, models, batch, args.iters, args.warmup, args.warmup_time, interleaved=not args.sequential
            )
        rows = [summarise(e, batch, times[e], warmed[e]) for e in entries]
        add_ratios(rows)
        render(rows, env, console)  # one table per batch, printed as soon as it is measured
        results.extend(rows)
    if hasattr(os, "getloadavg"):
        env["loadavg_end"] = list(os.getloadavg())
    env["wall_s"] = round(time.perf_counter() - t_start, 1)
    console.print(LEGEND)
    if args.json is not None:
        settings = {
            "batch": args.batch, "iters": args.iters, "warmup": args.warmup, "warmup_time": args.warmup_time,
            "threads": args.threads, "schedule": "sequential" if args.sequential else "interleaved",
            "quick": args.quick, "argv": sys.argv[1:] if argv is None else list(argv),
            "build": "eval, torch.inference_mode, fused attention (scaled_dot_product_attention)",
        }
        payload = {"environment": env, "settings": settings, "results": [asdict(r) for r in results]}
        write_json(args.json, payload, say=console.print)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
