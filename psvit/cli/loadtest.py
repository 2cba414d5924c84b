"""``psvit-export loadtest URL``: a closed-loop concurrency sweep against a Triton server, checked responses."""
from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from .console import console, err_console


class Protocol(str, enum.Enum):
    http = "http"
    grpc = "grpc"


def sweep_table(report) -> Table:  # noqa: ANN001 - LoadTestReport, imported lazily
    """One row per concurrency level: client throughput and latency, the server's queue/compute split."""
    table = Table(title=f"{escape(report.model)} at {escape(report.url)} over {report.protocol}, batch {report.batch} "
                        f"(latency ms; server: per request, from Triton's statistics)")
    for col in ("conc.", "requests", "errors", "infer/s", "mean", "p50", "p90", "p95", "p99", "srv queue",
                "srv compute", "avg batch", "mismatch"):
        table.add_column(col, justify="right")
    for lv in report.levels:
        lat, srv = lv.latency, lv.server
        table.add_row(
            str(lv.concurrency), str(lv.requests), str(lv.errors), f"{lv.throughput:,.0f}",
            *(f"{lat[k]:.2f}" for k in ("mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms")),
            f"{srv['queue_ms']:.2f}" if srv else "-",
            f"{srv['compute_input_ms'] + srv['compute_infer_ms'] + srv['compute_output_ms']:.2f}" if srv else "-",
            f"{srv['avg_batch']:.1f}" if srv else "-",
            f"{lv.mismatches}/{lv.checked}" if lv.checked else "-",
        )
    return table


@app.command("loadtest")
def loadtest_command(
    url: Annotated[str, typer.Argument(help="Server: localhost:8000 (HTTP) or localhost:8001 (gRPC).")],
    model: Annotated[str, typer.Option(help="Model name on the server.")] = "psvit",
    protocol: Annotated[Protocol, typer.Option(help="Triton client protocol.")] = Protocol.http,
    concurrency: Annotated[str, typer.Option(help="Concurrency levels, comma-separated.")] = "1,4,16,64",
    requests: Annotated[Optional[int], typer.Option(
        help="Requests per level (default 500 unless --duration).")] = None,
    duration: Annotated[Optional[float], typer.Option(help="Seconds per level, instead of --requests.")] = None,
    batch: Annotated[int, typer.Option(help="Rows per request.")] = 1,
    reference: Annotated[Optional[str], typer.Option(
        help="Artifact to check every response against (psvit.runtime on the same inputs).")] = None,
    rtol: Annotated[float, typer.Option(help="Largest relative L2 error of a response vs the reference.")] = 1e-5,
    timeout: Annotated[float, typer.Option(help="Per-request timeout (s).")] = 60.0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write throughput vs p99 latency (PNG).")] = None,
) -> None:
    """Throughput and latency per concurrency level, the server's queue vs compute time; exit 1 on mismatches."""
    from ..errors import require
    from ..outputs import Output, OutputKind, check_outputs
    from ..provenance import write_json
    from ..serve.loadgen import parse_concurrency, run_loadtest

    levels = parse_concurrency(concurrency)
    check_outputs([Output(json_out, OutputKind.JSON, "--json"), Output(plot, OutputKind.PLOT, "--plot")],
                  inputs=[reference])  # before the sweep, not after
    if plot is not None:
        require("matplotlib", "'psvit-deploy[plot]'", "load test plots")
    if reference is None:
        err_console.print("[yellow]note:[/] responses are not checked; pass --reference ARTIFACT to compare them "
                          "with psvit.runtime", highlight=False)
    report = run_loadtest(url, model=model, protocol=protocol.value, concurrency=levels, requests=requests,
                          duration=duration, batch=batch, reference=reference, rtol=rtol, timeout_s=timeout,
                          log=lambda m: err_console.print(f"[dim]{escape(m)}[/]", highlight=False))
    console.print(sweep_table(report))
    if json_out is not None:
        write_json(json_out, report.to_dict())
        err_console.print(f"wrote {escape(str(json_out))}", highlight=False)
    if plot is not None:
        from ..serve.plots import plot_sweeps

        plot_sweeps([(f"{report.model} ({report.protocol})", report.levels)], plot)
        err_console.print(f"wrote {escape(str(plot))}", highlight=False)
    for lv in report.levels:
        for sample in lv.error_samples:
            err_console.print(f"[red]error at concurrency {lv.concurrency}:[/] {escape(sample)}", highlight=False)
    if report.mismatches:
        err_console.print(f"[bold red]{report.mismatches} responses differ from the reference[/] (relative error > "
                          f"{rtol:g}, or a response id that is not its request's)", highlight=False)
        raise typer.Exit(1)
