"""``psvit-export calibrate MODEL --calib-data DIR --out FILE``: INT8 Q/DQ ONNX with a calibration cache,
an FP32-vs-INT8 accuracy report and optional per-layer sensitivity."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from .console import console, err_console


@app.command("calibrate")
def calibrate_command(
    model: str = typer.Argument(..., metavar="MODEL", help="FP32 .onnx from 'psvit-export onnx' (or a checkpoint, "
                                                          "'demo' or a variant: exported to FP32 first)."),
    calib_data: Optional[str] = typer.Option(None, "--calib-data", help="Image folder (recursive), .npy/.npz of "
                                             "preprocessed images, or 'synthetic'. Required."),
    out: Path = typer.Option(..., "--out", "-o", help="Output INT8 .onnx file."),
    calib_count: Optional[int] = typer.Option(None, "--calib-count", help="Calibration images (default 512, "
                                              "the ~500 NVIDIA advises; README: Calibration at scale). Fewer than "
                                              "a method needs (max/entropy 256, percentile 64, mse 16) warns."),
    calib_batch: Optional[int] = typer.Option(None, "--calib-batch", help="Images per calibration run (default 16; "
                                              "memory grows with it, the ranges do not change)."),
    method: str = typer.Option("max", "--method", help="max | percentile | entropy | mse."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Calibration cache (default OUT.calib.json)."),
    force_recalibrate: bool = typer.Option(False, "--force-recalibrate", help="Overwrite a cache of another model."),
    exclude: list[str] = typer.Option([], "--exclude", help="Regex on node names to keep out of INT8 (repeatable)."),
    quantize_qk: bool = typer.Option(False, "--quantize-qk", help="Also quantize the Q·Kᵀ MatMul inputs."),
    keep_fp32: bool = typer.Option(False, "--keep-fp32", help="Non-quantized part FP32 (default FP16)."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="Labelled held-out images: image folder or "
                                            "'synthetic' (the training split's held-out images)."),
    eval_count: Optional[int] = typer.Option(None, "--eval-count", help="At most this many held-out images."),
    sensitivity: bool = typer.Option(False, "--sensitivity", help="Rank layers by the error each adds alone."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON."),
) -> None:
    """Quantize to explicit Q/DQ INT8 ONNX with the PSViT recipe and report FP32 vs INT8 accuracy."""
    from ..calibration import load_calibration_set, quantize_onnx
    from ..calibration.model import load_fp32_model
    from ..errors import DataError
    from ..provenance import atomic_output, check_output_folder

    if eval_count is not None and eval_count < 1:
        raise DataError(f"--eval-count must be at least 1, got {eval_count}")
    if json_out is not None:  # a missing or read-only --json folder fails before the work, not after it
        check_output_folder(json_out, DataError)
    held_out: dict[str, Any] = {}

    def check_eval_data(fp32: Any) -> None:  # --eval-data problems surface before any calibration work
        if eval_data is not None:
            from ..calibration.evaluation import load_eval_set

            held_out["data"] = load_eval_set(eval_data, preprocess=fp32.preprocess, metadata=fp32.metadata,
                                             count=eval_count)

    with _progress_bar() as progress:
        result = quantize_onnx(
            model, out, calib_data=calib_data, calib_count=calib_count, calib_batch=calib_batch, method=method,
            cache_path=cache, force_recalibrate=force_recalibrate, exclude=tuple(exclude), quantize_qk=quantize_qk,
            keep_fp32=keep_fp32, log=_log, progress=progress, on_fp32=check_eval_data,
        )
    table = Table(title=f"INT8 {result.path}", show_header=False)
    counts = ", ".join(f"{k} {v}" for k, v in result.recipe.summary()["quantized"].items())
    table.add_row("quantized", f"{counts} ({result.qdq_nodes} Q/DQ nodes); rest {result.precision_rest}")
    table.add_row("not quantized", f"{len(result.recipe.excluded)} MatMul/Conv/Gemm nodes (A·V, pooling, head"
                                   f"{', Q·Kᵀ' if not quantize_qk else ''}{', --exclude' if exclude else ''})")
    table.add_row("calibration", f"{result.method}, {result.images} images"
                                 f"{f', {len(result.skipped)} unreadable skipped' if result.skipped else ''}")
    table.add_row("cache", f"{result.cache_path} ({'reused' if result.cache_reused else 'written'}, "
                           f"sha256 {result.cache_sha256[:12]}…)")
    per_image = f", {result.seconds_per_image * 1e3:.0f} ms/image" if not result.cache_reused else ""
    table.add_row("time", f"{result.seconds:.1f}s (calibration {result.calibration_seconds:.1f}s{per_image}); "
                          f"peak memory {result.peak_rss_bytes / 2**30:.2f} GB")
    console.print(table)
    report: dict[str, Any] = {"quantize": result.to_dict()}

    fp32 = load_fp32_model(result.fp32_path) if eval_data is not None or sensitivity else None
    if fp32 is not None and eval_data is not None:
        from ..calibration.report import accuracy_report, report_table

        report["accuracy"] = accuracy_report(fp32.path, result.path, held_out["data"])
        console.print(report_table(report["accuracy"]))
    if fp32 is not None and sensitivity:
        from ..calibration.sensitivity import layer_sensitivity, sensitivity_table

        images = load_calibration_set(calib_data, preprocess=fp32.preprocess, input_shape=fp32.input_shape,
                                      count=min(result.images, 128)).take(128)
        sens = layer_sensitivity(fp32.path, result.cache_path, images, quantize_qk=quantize_qk,
                                 exclude=tuple(exclude))
        report["sensitivity"] = sens.to_dict()
        console.print(sensitivity_table(sens))
        if sens.suggested_exclusions:
            hint = " ".join(f"--exclude '^{n}$'" for n in sens.suggested_exclusions)
            console.print(f"suggested exclusions (* above): {hint}", highlight=False)
    if json_out is not None:
        with atomic_output(json_out, suffix=".json") as tmp:
            tmp.write_text(json.dumps(report, indent=2, default=str))


def _log(msg: str) -> None:
    """quantize_onnx's stage lines, dimmed, and its warnings in yellow, on stderr."""
    if msg.startswith("warning: "):
        err_console.print(f"[bold yellow]warning:[/] {escape(msg.removeprefix('warning: '))}", highlight=False)
    else:
        err_console.print(f"[dim]{escape(msg)}[/]", highlight=False)


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[Any], None]]:
    """A progress callback for quantize_onnx: one bar per calibration pass on stderr, with images/s and ETA."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[speed]}"), console=err_console, transient=True) as bar:
        tasks: dict[int, Any] = {}

        def update(p: Any) -> None:  # a psvit.calibration.CalibrationProgress
            if p.step not in tasks:
                tasks[p.step] = bar.add_task(f"calibration pass {p.step}/{p.steps} ({p.stage})", total=p.total,
                                             speed="")
            bar.update(tasks[p.step], completed=p.done,
                       speed=f"{p.images_per_s:.1f} images/s, ETA {p.eta_s:.0f}s")

        yield update
