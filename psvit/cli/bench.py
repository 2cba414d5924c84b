"""``psvit-export bench ARTIFACT...``: trtexec-style latency statistics over batch sizes, one comparison table."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from .console import console, note, say
from .options import BackendChoice, DeviceOpt, JsonOpt, ThreadsOpt


def parse_batches(text: str) -> list[int]:
    """``"1,8,32"`` -> [1, 8, 32]."""
    from ..runtime.errors import RuntimeInputError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RuntimeInputError(f"--batch takes comma-separated positive integers (1,8,32), got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise RuntimeInputError(f"--batch takes comma-separated positive integers (1,8,32), got {text!r}")
    return sorted(set(values))


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def comparison_table(report, title: str = "") -> Table:  # noqa: ANN001 - BenchReport, imported lazily
    """One row per target and batch: end-to-end stats (ms), compute/preprocess medians, ratio vs the first."""
    where = report.machine.get("gpu") or report.machine.get("processor")
    table = Table(title=title or f"end-to-end latency (ms) on {where}; comp/prep: median compute and "
                                 f"preprocessing; ratio: median vs the first artifact at that batch")
    for col in ("artifact", "backend", "batch", "mean", "median", "p90", "p95", "p99", "min", "max", "CoV", "img/s",
                "comp", "prep", "ratio"):
        table.add_column(col, justify="left" if col in ("artifact", "backend") else "right",
                         no_wrap=col != "artifact", min_width=16 if col == "artifact" else None)
    for row in report.comparison():
        s, t = row["stats"], row["target"]
        comp, pre = row["compute"], row["preprocess"]
        table.add_row(
            escape(Path(t.artifact).name), f"{t.backend} {t.device}", str(row["batch"]), _ms(s.mean_ms),
            _ms(s.median_ms), _ms(s.p90_ms), _ms(s.p95_ms), _ms(s.p99_ms), _ms(s.min_ms), _ms(s.max_ms),
            f"{s.cv:.0%}", f"{s.throughput:,.0f}", _ms(comp.median_ms) if comp else "-",
            _ms(pre.median_ms) if pre else "-", f"{row['ratio']:.2f}x" if row["ratio"] is not None else "-",
        )
    return table


def layers_table(target, top: int = 10) -> Table:  # noqa: ANN001 - TargetResult
    table = Table(title=f"per-layer times: {escape(target.description)}, batch {target.layers_batch} (top {top})")
    for col in ("layer / op type", "ms per run", "calls", "share"):
        table.add_column(col, justify="left" if col.startswith("layer") else "right")
    for name, v in list(target.layers.items())[:top]:
        table.add_row(escape(name), f"{v['ms_per_run']:.3f}", f"{v['calls_per_run']:.0f}", f"{v['share']:.1%}")
    return table


@app.command("bench")
def bench_command(
    artifacts: Annotated[list[str], typer.Argument(
        metavar="ARTIFACT...", help="Engines, .onnx files, checkpoints or 'demo' (compared with the first).")],
    backend: Annotated[BackendChoice, typer.Option(help="Backend [default: auto, from the artifact].")
                       ] = BackendChoice.auto,
    device: DeviceOpt = None,
    providers: Annotated[Optional[str], typer.Option(
        help="ONNX Runtime providers, comma-separated: cpu,cuda,tensorrt.")] = None,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8,32",
    warmup: Annotated[str, typer.Option(help="Warm-up: iterations (20) or time (2s, 500ms).")] = "10",
    iters: Annotated[int, typer.Option(help="Timed iterations per batch size.")] = 50,
    threads: ThreadsOpt = None,
    layers: Annotated[bool, typer.Option(
        "--layers/--no-layers", help="Per-layer times where the backend offers them.")] = True,
    json_out: JsonOpt = None,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Write latency/throughput vs batch plots (PNG).")] = None,
) -> None:
    """Latency per batch size: mean/median/p90/p95/p99/min/max, CoV, throughput; compute vs end-to-end."""
    from ..errors import require
    from ..outputs import Output, OutputKind, check_outputs
    from ..provenance import write_json
    from ..runtime.bench import bench
    from ..runtime.errors import RuntimeInputError
    from ..runtime.profiler import parse_warmup

    if iters < 1:
        raise RuntimeInputError(f"--iters must be at least 1, got {iters}")
    if plot is not None:
        require("matplotlib", "'psvit-deploy[plot]'", "benchmark plots")
    check_outputs([Output(json_out, OutputKind.JSON, "--json"), Output(plot, OutputKind.PLOT, "--plot")],
                  inputs=artifacts)  # before minutes of timing, not after
    options: dict = {}
    if threads:
        options["threads"] = threads
    if providers:
        options["providers"] = [p.strip() for p in providers.split(",") if p.strip()]
    report = bench(artifacts, backend=backend.value, device=device, batches=parse_batches(batch),
                   warmup=parse_warmup(warmup), iters=iters, layers=layers, options=options,
                   log=note)
    console.print(comparison_table(report))
    for t in report.targets:
        if t.layers:
            console.print(layers_table(t))
    if json_out is not None:
        write_json(json_out, report.to_dict())
        say(f"wrote {json_out}")
    if plot is not None:
        from ..runtime.plots import plot_report

        plot_report(report, plot)
        say(f"wrote {plot}")
