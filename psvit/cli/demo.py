"""``psvit-export demo``: the whole pipeline on the bundled model, with accuracy and latency tables."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from .console import console, note, warn
from .options import ThreadsOpt


def _size(n: int | None) -> str:
    return "-" if n is None else (f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB")


def demo_tables(result) -> list[Table]:  # noqa: ANN001 - DemoResult, imported lazily
    """Artifacts, accuracy per precision, latency per backend and precision."""
    arts = Table(title=f"artifacts in {result.out}")
    for col in ("artifact", "precision", "kind", "size", "seconds", "status"):
        arts.add_column(col, justify="right" if col in ("size", "seconds") else "left")
    for a in result.artifacts:
        arts.add_row(a["name"], a["precision"], a["kind"], _size(a.get("bytes")),
                     f"{a['seconds']:.1f}" if "seconds" in a else "-", escape(a["status"]))
    h = result.heldout
    acc = Table(title=f"accuracy on {h['images']} held-out synthetic images (seed {h['seed']}; training run reported "
                      f"{h['training_heldout_top1']:.1%})" if h.get("training_heldout_top1") is not None else
                      f"accuracy on {h['images']} held-out synthetic images")
    for col in ("artifact", "precision", "backend", "top-1", "agreement vs PyTorch", "rel L2 vs PyTorch"):
        acc.add_column(col, justify="left" if col in ("artifact", "precision", "backend") else "right")
    for r in result.accuracy:
        acc.add_row(r["artifact"], r["precision"], r["backend"], f"{r['top1']:.2%}", f"{r['agreement']:.2%}",
                    f"{r['rel_l2']:.2e}")
    lat = Table(title=f"latency on this machine ({result.machine.get('cpu_count')} CPUs), end-to-end ms")
    for col in ("artifact", "backend", "precision", "batch", "median", "p90", "p99", "CoV", "img/s"):
        lat.add_column(col, justify="left" if col in ("artifact", "backend", "precision") else "right")
    for r in result.latency:
        lat.add_row(r["artifact"], r["backend"], r["precision"], str(r["batch"]), f"{r['median_ms']:.3f}",
                    f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['cv']:.1%}", f"{r['throughput']:,.0f}")
    return [arts, acc, lat]


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output folder (its own earlier output is replaced).")] = Path("runs/demo"),
    heldout: Annotated[Optional[int], typer.Option(
        help="Use only the first N held-out images [default: all].")] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes of the latency table.")] = "1,32",
    iters: Annotated[int, typer.Option(help="Timed iterations per batch size.")] = 20,
    warmup: Annotated[str, typer.Option(help="Warm-up: iterations or time (2s).")] = "5",
    engines: Annotated[bool, typer.Option(
        "--engines/--no-engines", help="Build TensorRT(-RTX) engines if a builder is installed.")] = True,
    threads: ThreadsOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Write into a non-empty folder that holds no earlier demo output.")] = False,
) -> None:
    """Export FP32/FP16/INT8 (and engines), then accuracy per precision and latency per backend."""
    from ..demo import SUMMARY, run_demo
    from .bench import parse_batches

    result = run_demo(out, heldout=heldout, batches=tuple(parse_batches(batch)), iters=iters, warmup=warmup,
                      engines=engines, force=force, threads=threads, log=note)
    for table in demo_tables(result):
        console.print(table)
    for s in result.skipped:
        warn(f"{s['what']}: {s['why']}", "skipped:")
    note(f"wrote {result.out / SUMMARY} ({result.seconds['total']:.0f} s)")
