"""``psvit-export calibrate MODEL --calib-data DIR --out FILE``: INT8 Q/DQ ONNX with a calibration cache,
an FP32-vs-INT8 accuracy report and optional per-layer sensitivity."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from . import app
from .console import console, err_console, note, warn
from .options import (
    CalibBatchOpt, CalibCacheOpt, CalibCountOpt, CalibDataOpt, CalibMethod, CalibMethodOpt, JsonOpt, VariantOpt,
    deprecated_alias,
)


@app.command("calibrate")
def calibrate_command(
    model: Annotated[str, typer.Argument(
        metavar="MODEL", help="FP32 .onnx from 'psvit-export onnx' (or a checkpoint, 'demo' or a variant: "
                              "exported to OUT's folder as *.fp32.onnx first).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output INT8 .onnx file.")],
    variant: VariantOpt = None,
    calib_data: CalibDataOpt = None,
    calib_count: CalibCountOpt = None,
    calib_batch: CalibBatchOpt = None,
    calib_method: CalibMethodOpt = CalibMethod.max,
    method_old: Annotated[Optional[CalibMethod], typer.Option("--method", hidden=True)] = None,
    calib_cache: CalibCacheOpt = None,
    cache_old: Annotated[Optional[Path], typer.Option("--cache", hidden=True)] = None,
    force_recalibrate: Annotated[bool, typer.Option(
        "--force-recalibrate", help="Overwrite a cache of another model.")] = False,
    exclude: Annotated[Optional[list[str]], typer.Option(
        "--exclude", help="Regex on node names to keep out of INT8 (repeatable).")] = None,
    quantize_qk: Annotated[bool, typer.Option("--quantize-qk", help="Also quantize the Q·Kᵀ MatMul inputs.")] = False,
    keep_fp32: Annotated[bool, typer.Option(
        "--keep-fp32", help="Non-quantized part FP32 (suits ONNX Runtime CPU) [default: FP16, for TensorRT].")
    ] = False,
    eval_data: Annotated[Optional[str], typer.Option(
        "--eval-data", help="Labelled held-out images: image folder or 'synthetic' (the training split's "
                            "held-out images).")] = None,
    eval_count: Annotated[Optional[int], typer.Option("--eval-count", help="At most this many held-out images.")
                          ] = None,
    sensitivity: Annotated[bool, typer.Option(
        "--sensitivity", help="Rank layers by the error each adds alone.")] = False,
    json_out: JsonOpt = None,
) -> None:
    """Quantize to explicit Q/DQ INT8 ONNX with the PSViT recipe and report FP32 vs INT8 accuracy."""
    from ..artifacts import ArtifactKind, detect_artifact
    from ..calibration import default_cache_path, load_calibration_set, quantize_onnx
    from ..errors import ArtifactError, DataError
    from ..outputs import Output, OutputKind, check_outputs
    from ..provenance import write_json

    calib_method = deprecated_alias("--method", "--calib-method", method_old, calib_method)
    calib_cache = deprecated_alias("--cache", "--calib-cache", cache_old, calib_cache)
    exclude = exclude or []
    if eval_count is not None and eval_count < 1:
        raise DataError(f"--eval-count must be at least 1, got {eval_count}")
    say = _log
    fp32_path = model
    kind = detect_artifact(model).kind
    if kind is ArtifactKind.ENGINE:
        raise ArtifactError(f"{model} is a TensorRT engine; calibrate its FP32 ONNX or checkpoint instead (an engine's "
                            f"sidecar names its ONNX: psvit-export inspect {model})")
    fp32_out = None if kind is ArtifactKind.ONNX else out.with_name(out.stem + ".fp32.onnx")
    check_outputs([  # every file this command writes, before any work
        Output(out, OutputKind.ONNX), Output(calib_cache or default_cache_path(out), OutputKind.JSON, "--calib-cache"),
        Output(json_out, OutputKind.JSON, "--json"), Output(fp32_out, OutputKind.ONNX, "the FP32 ONNX export"),
    ], inputs=[model, calib_data, eval_data])
    if fp32_out is not None:  # a checkpoint: the pipeline exports it first
        from ..calibration.data import require_data
        from ..pipeline import export_step

        require_data(calib_data)  # before minutes of export
        fp32_path = str(export_step(model, fp32_out, "fp32", variant=variant, log=say).path)
    held_out: dict[str, Any] = {}

    def check_eval_data(fp32: Any) -> None:  # --eval-data problems surface before any calibration work
        held_out["fp32"] = fp32  # the checked FP32 model, reused below instead of reading the ONNX again
        if eval_data is not None:
            from ..calibration.evaluation import load_eval_set

            held_out["data"] = load_eval_set(eval_data, preprocess=fp32.preprocess, metadata=fp32.metadata,
                                             count=eval_count)

    with _progress_bar() as progress:
        result = quantize_onnx(
            fp32_path, out, calib_data=calib_data, calib_count=calib_count, calib_batch=calib_batch,
            calib_method=calib_method.value, calib_cache=calib_cache, force_recalibrate=force_recalibrate,
            exclude=tuple(exclude), quantize_qk=quantize_qk, keep_fp32=keep_fp32, log=say, progress=progress,
            on_fp32=check_eval_data,
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

    fp32 = held_out["fp32"] if eval_data is not None or sensitivity else None
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
            console.print(f"suggested exclusions (* above): {hint}", highlight=False, markup=False)
    if json_out is not None:
        write_json(json_out, report)


def _log(msg: str) -> None:
    """quantize_onnx's stage lines, dimmed, and its warnings in yellow, on stderr."""
    if msg.startswith("warning: "):
        warn(msg.removeprefix("warning: "))
    else:
        note(msg)


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
