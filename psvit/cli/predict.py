"""``psvit-export predict ARTIFACT INPUT...``: labels for image files, into a resumable output file."""
from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import app
from .console import console, err_console
from .options import BackendChoice, DeviceOpt, JsonOpt
from .signals import on_stop_say

LISTED_FAILURES = 10  # failures shown in the summary table (all are in the output and the --json summary)


class OutputFormat(str, enum.Enum):
    jsonl = "jsonl"
    csv = "csv"
    parquet = "parquet"


def summary_table(summary) -> Table:  # noqa: ANN001 - PredictSummary, imported lazily
    """Counts, throughput and where the time went."""
    d = summary.to_dict()
    sec = d["seconds"]
    table = Table(title=f"predict: {escape(d['out'])} ({d['format']}, {d['engine']})", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("note")
    table.add_row("image files found", f"{d['found']:,}", "")
    if d["already_done"]:
        table.add_row("already in the output", f"{d['already_done']:,}",
                      f"skipped (resume); {d['earlier_failed']} of them unreadable")
    table.add_row("predicted", f"{d['predicted']:,}", "")
    table.add_row("unreadable, skipped", f"{d['failed']:,}", "listed below" if d["failed"] else "")
    table.add_row("throughput", f"{d['images_per_s']:,.1f} img/s", "files per second of the pipeline")
    table.add_row("setup", f"{sec['setup']:.2f} s", "finding files, loading the artifact" +
                  (", the Ray cluster" if d["engine"] == "ray" else ""))
    table.add_row("pipeline", f"{sec['pipeline']:.2f} s", "first batch asked to last result")
    table.add_row("  first result", f"{d['stats']['first_result_s']:.2f} s",
                  "actors starting, first batch" if d["engine"] == "ray" else "loader start-up, first batch")
    workers = d["settings"].get("loader_workers")
    where = "worker CPU seconds" if d["engine"] == "ray" or workers else "in this thread"
    table.add_row("  decode", f"{sec['decode']:.2f} s", where)
    table.add_row("  preprocess", f"{sec['preprocess']:.2f} s", f"{where}; resize, crop, normalise")
    table.add_row("  infer", f"{sec['infer']:.2f} s", "actor seconds" if d["engine"] == "ray" else "model + top-k")
    table.add_row("  waiting for data", f"{sec['wait_for_loader']:.2f} s",
                  "results from Ray" if d["engine"] == "ray" else "inference idle, waiting for the loader")
    table.add_row("  write", f"{sec['write']:.2f} s", "")
    return table


@app.command("predict")
def predict_command(
    artifact: Annotated[str, typer.Argument(metavar="ARTIFACT", help="Engine, .onnx file, checkpoint or 'demo'.")],
    inputs: Annotated[list[str], typer.Argument(
        metavar="INPUT...", help="Image files, folders (searched recursively) or glob patterns "
                                 "(quote them: 'photos/**/*.jpg').")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Output file: .jsonl, .csv or .parquet (a folder of parts). Default: JSON lines "
                            "on stdout.")] = None,
    fmt: Annotated[Optional[OutputFormat], typer.Option(
        "--format", help="Output format (default: from the --out suffix).")] = None,
    topk: Annotated[int, typer.Option("--topk", min=1, help="Classes per image, most probable first.")] = 5,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per inference call.")] = 32,
    loader_workers: Annotated[Optional[int], typer.Option(
        "--loader-workers", min=0, show_default="half the CPUs",
        help="Processes that decode and preprocess ahead of inference; 0: in the main thread.")] = None,
    backend: Annotated[BackendChoice, typer.Option("--backend", help="Backend (auto: from the artifact).")
                       ] = BackendChoice.auto,
    device: DeviceOpt = None,
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, help="CPU threads of the backend (PyTorch / ONNX Runtime intra-op).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run: files already in --out are skipped.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
    json_out: JsonOpt = None,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", metavar="ADDRESS", help="Run on Ray Data: 'local' starts a cluster on this machine, 'auto' "
                                         "joins this node's cluster, or HOST:6379 / ray://HOST:10001.")] = None,
    ray_actors: Annotated[Optional[int], typer.Option(
        "--ray-actors", min=1, show_default="one per GPU, else per CPU",
        help="Inference actors (each loads the artifact once).")] = None,
    ray_gpus: Annotated[Optional[float], typer.Option(
        "--ray-gpus-per-actor", min=0, show_default="1 if the cluster has GPUs",
        help="GPUs per actor.")] = None,
    ray_cpus: Annotated[Optional[int], typer.Option(
        "--ray-cpus", min=1, show_default="all usable", help="CPUs of a --ray local cluster.")] = None,
) -> None:
    """Top-k labels for image files: pipelined decoding, streamed to a resumable file, optional Ray scale-out."""
    from ..errors import ConfigError
    from ..outputs import Output, OutputKind, check_outputs
    from ..provenance import write_json
    from ..runtime.predict_job import predict_to_file, run_record_path

    # Parquet outputs are folders of parts (and an output that exists may be resumed): the prediction file is
    # checked against the inputs here, for existence/resume/format by predict_to_file. The run record beside
    # it is checked too, so that --json cannot name it.
    predictions = None if out is None or out.suffix.lower() == ".parquet" else out
    record = None if out is None else run_record_path(out)
    check_outputs([Output(predictions, OutputKind.FILE), Output(record, OutputKind.JSON, "the run record"),
                   Output(json_out, OutputKind.JSON, "--json")], inputs=[artifact, *inputs])
    ray_settings = None
    if ray is not None:
        from ..runtime.ray_predict import RaySettings

        ray_settings = RaySettings(address=ray, actors=ray_actors, gpus_per_actor=ray_gpus, local_cpus=ray_cpus)
        if loader_workers is not None:
            raise ConfigError("--loader-workers does not apply with --ray (Ray schedules the decoding); drop it")
    elif any(v is not None for v in (ray_actors, ray_gpus, ray_cpus)):
        raise ConfigError("--ray-actors, --ray-gpus-per-actor and --ray-cpus need --ray ADDRESS")
    options = {"threads": threads} if threads else {}

    with Progress(
        TextColumn("predicting"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} img/s"), TextColumn("ETA"), TimeRemainingColumn(),
        console=err_console, transient=True,
    ) as bar:
        task = bar.add_task("predict", total=None, rate="-")

        def started(found: int, todo: int) -> None:
            bar.update(task, total=todo)

        def progressed(done: int, todo: int, stats) -> None:  # noqa: ANN001 - PredictStats
            bar.update(task, completed=done, rate=f"{stats.images_per_s:,.0f}")

        if out is not None:
            on_stop_say(f"the rows finished so far (if any) are kept in {out}; the same command with --resume "
                        f"continues it")
        summary = predict_to_file(
            artifact, inputs, out, fmt=fmt.value if fmt else None, topk=topk, batch=batch,
            loader_workers=loader_workers, backend=backend.value, device=device, options=options,
            resume=resume, force=force, ray=ray_settings, on_start=started, on_progress=progressed)
    report = console if out is not None else err_console  # stdout carries the predictions without --out
    report.print(summary_table(summary))
    for path, error in summary.failed[:LISTED_FAILURES]:
        err_console.print(f"[yellow]unreadable:[/] {escape(error)}", highlight=False)
    if len(summary.failed) > LISTED_FAILURES:
        err_console.print(f"... and {len(summary.failed) - LISTED_FAILURES} more (their records in the output "
                          f"have an error)", highlight=False)
    if json_out is not None:
        write_json(json_out, summary.to_dict())
        err_console.print(f"wrote {escape(str(json_out))}", highlight=False)
    classes = summary.runtime.get("classes")
    if classes and topk > classes:
        err_console.print(f"note: --topk {topk} is more than the model's {classes} classes; each row lists all "
                          f"{classes}", highlight=False)
    attempted = summary.found - summary.already_done
    if attempted and len(summary.failed) == attempted:  # nothing predicted: a failed run, whatever was written
        err_console.print(f"error: none of the {attempted} image file(s) could be read; see the errors above",
                          highlight=False)
        raise typer.Exit(1)
