"""``psvit-export trt SOURCE --out FILE``: a TensorRT / TensorRT-RTX engine plus its sidecar ``FILE.json``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..flags import TRT_FLAGS as F
from . import app
from .console import console, err_console, format_bytes, note, warn
from .options import (
    BuilderChoice, CalibBatchOpt, CalibCacheOpt, CalibCountOpt, CalibDataOpt, CalibMethod, CalibMethodOpt, JsonOpt,
    deprecated_alias,
)


class _Status:
    """A rich spinner showing the builder's current phase and the elapsed time."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.phase = "starting"
        self.status = err_console.status("", spinner="dots")

    def __enter__(self) -> "_Status":
        self.status.__enter__()
        self._show()
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.__exit__(*exc)

    def _show(self) -> None:
        self.status.update(f"building engine [{time.perf_counter() - self.start:5.1f} s] {self.phase}")

    def log(self, msg: str) -> None:
        note(msg)
        self._show()

    def progress(self, phase: str) -> None:
        self.phase = phase
        self._show()


@app.command("trt")
def trt_command(
    source: Annotated[str, typer.Argument(
        metavar="SOURCE", help="Checkpoint (.safetensors), 'demo', a variant name (random weights), an FP32 ONNX, "
                               "or an FP16 / Q-DQ INT8 ONNX (built as it is).")],
    out: Annotated[Path, typer.Option(F["out"], "-o", help="Engine file (raw plan); its sidecar is FILE.json.")],
    fp16: Annotated[bool, typer.Option(F["fp16"], help="FP16 engine (exported from the checkpoint).")] = False,
    int8: Annotated[bool, typer.Option(F["int8"], help="INT8 engine (an FP32 source is calibrated: needs "
                                                      "--calib-data).")] = False,
    calib_data: CalibDataOpt = None,
    calib_count: CalibCountOpt = None,
    calib_batch: CalibBatchOpt = None,
    calib_method: CalibMethodOpt = CalibMethod.max,
    calib_cache: CalibCacheOpt = None,
    batch: Annotated[Optional[str], typer.Option(
        F["batch"], help="MIN:OPT:MAX profile or a fixed N [default: 1:8:32 for a dynamic batch].")] = None,
    workspace: Annotated[Optional[str], typer.Option(
        F["workspace"], help="Workspace limit, e.g. 512M, 2G [default: TensorRT's].")] = None,
    optimization_level: Annotated[Optional[int], typer.Option(
        F["optimization_level"], help="Builder optimization level 0-5; 0 builds fastest [default: 3].")] = None,
    opt_level_old: Annotated[Optional[int], typer.Option("--opt-level", hidden=True)] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(
        F["timing_cache"], help="Timing cache file, TensorRT only [default: one per TensorRT version and GPU in "
                               "~/.cache].")] = None,
    builder: Annotated[BuilderChoice, typer.Option(
        F["builder"], help="TensorRT flavour (auto: tensorrt if installed, else tensorrt-rtx).")] = BuilderChoice.auto,
    force: Annotated[bool, typer.Option(F["force"], help="Rebuild even if a matching engine exists.")] = False,
    onnx_out: Annotated[Optional[Path], typer.Option(
        F["onnx_out"], help="Where the ONNX graph made on the way goes [default: next to --out, e.g. m.fp16.engine "
                            "-> m.fp16.onnx; replaced when it was exported otherwise].")] = None,
    json_out: JsonOpt = None,
) -> None:
    """Build a TensorRT or TensorRT-RTX engine (raw plan) with a provenance sidecar; reuse a matching one."""
    from .. import pipeline
    from ..artifacts import sidecar_path
    from ..outputs import Output, OutputKind, check_outputs
    from ..provenance import write_json

    optimization_level = deprecated_alias("--opt-level", "--optimization-level", opt_level_old, optimization_level)
    # The pipeline checks the engine, sidecar and intermediate files; --json is this command's own.
    check_outputs([Output(json_out, OutputKind.JSON, "--json"), Output(sidecar_path(out), OutputKind.JSON,
                   "the sidecar")], inputs=[source, calib_data])
    with _Status() as status:
        result = pipeline.engine(
            source, out, fp16=fp16, int8=int8, calib_data=calib_data, calib_count=calib_count,
            calib_batch=calib_batch, calib_method=calib_method.value, calib_cache=calib_cache, batch=batch,
            workspace=workspace, optimization_level=optimization_level, timing_cache=timing_cache,
            builder=builder.value, force=force, onnx_out=onnx_out, log=status.log, progress=status.progress,
        )
    sc = result.sidecar
    title = f"{'reused' if result.reused else 'built'} {result.path}"
    table = Table(title=title, show_header=False)
    table.add_row("builder", f"{sc.flavour} {sc.version}")
    if sc.device_name:
        table.add_row("GPU", f"{sc.device_name} (compute capability {sc.compute_capability})")
    else:
        table.add_row("target", f"ahead of time, no GPU present: compute capability "
                                f"{', '.join(sc.target.get('compute_capabilities', []))}")
    table.add_row("precision", sc.precision.upper())
    if sc.profile:
        table.add_row("profile", "; ".join(f"{k}: min {v[0]} opt {v[1]} max {v[2]}" for k, v in sc.profile.items()))
    else:
        table.add_row("shapes (static)", "; ".join(f"{k}: {v}" for k, v in (sc.static_shapes or {}).items()))
    table.add_row("ONNX", f"{sc.onnx_path} (sha256 {sc.onnx_sha256[:12]}…)")
    if sc.calibration:
        c = sc.calibration
        table.add_row("calibration", f"method {c.get('method', '?')}, cache {c.get('cache') or c.get('cache_path') or '?'} "
                                     f"(sha256 {str(c.get('cache_sha256', '?'))[:12]}…"
                                     f"{', reused' if c.get('cache_reused') else ''})")
    for step in result.steps:
        table.add_row("step", step)
    opts = sc.build_options
    table.add_row("options", f"opt level {opts.get('optimization_level') if opts.get('optimization_level') is not None else 'default'}, "
                             f"workspace {format_bytes(opts['workspace_bytes']) if opts.get('workspace_bytes') else 'default'}")
    table.add_row("timing cache", str(opts.get("timing_cache")))
    table.add_row("size", format_bytes(sc.engine_bytes))
    table.add_row("build time", f"{sc.build_seconds:.1f} s" + (f" (at {sc.built_at}; reused now)" if result.reused else ""))
    check = sc.precision_check or {}
    table.add_row("layer precisions", str(check.get("status", "")) + (
        f" ({', '.join(f'{k} {v}' for k, v in check.get('counts', {}).items())})" if check.get("counts") else ""))
    parity = check.get("parity") or {}
    table.add_row("vs ONNX Runtime", str(parity.get("status", "")) + (
        f" (rel L2 {parity['rel_l2']:.2e} ≤ {parity['max_rel_l2']:g})" if "rel_l2" in parity else ""))
    table.add_row("sidecar", str(result.sidecar_path))
    console.print(table)
    for w in result.warnings:
        warn(w)
    if json_out is not None:
        write_json(json_out, result.to_dict())
