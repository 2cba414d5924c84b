"""The pipeline: one orchestrator from a checkpoint to what a target runs — ONNX FP32 -> FP16 / INT8 -> engine.

The stages take their direct input (``export_onnx``: a checkpoint; ``quantize_onnx``: an FP32 ONNX;
``build_engine_file``: an ONNX graph); this module chains them and makes every reuse decision, each by
content hash:

- an exported ONNX is kept when its metadata records the same checkpoint sha256, precision, opset, a
  dynamic batch, shared attention ``map`` and FP32 inputs/outputs; otherwise it is replaced, and the log says
  what differed (``--force`` re-exports; ``--onnx-out`` puts the graph elsewhere);
- an INT8 graph is re-made each time (seconds), from the calibration cache, which ``quantize_onnx`` reuses
  when the FP32 graph's sha256, the data fingerprint and the method match;
- an engine is kept when its sidecar records the same ONNX sha256, precision, profile, builder, version,
  target and build options.

Every FP16 graph comes from the checkpoint through ``export_onnx`` (graph checks, verification against
PyTorch); an FP32 ONNX asked for FP16 is re-exported from the checkpoint its metadata records. The target
decides what suits it: the part of an INT8 graph that is not quantized stays FP32 for ONNX Runtime CPU
(it has few FP16 kernels: on psvit_2d_tiny, 2 cores, INT8 ran 1.91x faster than FP32 at batch 8 with an FP32
rest vs 1.76x with an FP16 rest) and becomes FP16 for TensorRT and ONNX Runtime CUDA.
"""
from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import ENGINE_SUFFIXES, ArtifactKind, detect_artifact
from .errors import ArtifactError, PSViTError
from .provenance import sha256_file

Log = Callable[[str], None]
NEED_CALIB = ("--int8 needs calibration images: add --calib-data DIR (an image folder or .npy/.npz of "
              "preprocessed images); random data is never used")


class Target(str, enum.Enum):
    """Where the artifact will run."""

    TENSORRT = "tensorrt"
    ORT_CPU = "ort-cpu"
    ORT_CUDA = "ort-cuda"

    @property
    def int8_rest(self) -> str:
        """Precision of the non-quantized part of an INT8 graph for this target (see the module docstring)."""
        return "fp32" if self is Target.ORT_CPU else "fp16"


@dataclass
class Calibration:
    """INT8 calibration settings (see :func:`psvit.calibration.quantize_onnx`)."""

    data: Any  # image folder, .npy/.npz, "synthetic" or an array; None is refused
    count: int | None = None
    batch: int | None = None
    method: str = "max"
    cache: str | os.PathLike | None = None
    force: bool = False  # recalibrate even over another model's cache


@dataclass
class OnnxStep:
    """The ONNX graph a target gets, and how it came to be."""

    path: Path
    precision: str  # "fp32" | "fp16" | "int8"
    steps: list[str] = field(default_factory=list)
    reused: bool = False
    calibration: dict[str, Any] | None = None  # the INT8 record for the engine's sidecar
    export: Any = None  # ExportResult when exported now
    quantize: Any = None  # QuantizeResult when quantized now


def derived_onnx_path(out: Path, precision: str, avoid: Path | None = None) -> Path:
    """Where the ``precision`` ONNX made on the way to ``out`` is kept: ``model.fp16.engine`` -> ``model.fp16.onnx``."""
    base = out.name
    for suffix in (*ENGINE_SUFFIXES, ".onnx"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    for tag in (".fp32", ".fp16", ".int8"):
        if base.endswith(tag):
            base = base[: -len(tag)]
    path = out.with_name(f"{base}.{precision}.onnx")
    if avoid is not None and path.resolve() == avoid.resolve():
        path = out.with_name(f"{base}.{precision}.build.onnx")
    return path


# ---- reuse: every decision is here ------------------------------------------------------------------------
def source_sha256(source: str) -> str | None:
    """The sha256 of a checkpoint source (None for a variant name: random weights)."""
    art = detect_artifact(source)
    if art.kind is not ArtifactKind.CHECKPOINT:
        return None
    if art.path is None:  # 'demo'
        from .checkpoint import demo_checkpoint_path

        return sha256_file(demo_checkpoint_path())
    return sha256_file(art.path) if art.path.is_file() else None


def reusable_export(path: Path, source: str, precision: str) -> bool:
    """An existing export at ``path`` made exactly as :func:`export_step` would make it: the same checkpoint
    (sha256), precision and opset, dynamic batch, shared attention ``map``, FP32 inputs/outputs."""
    return export_differences(path, source, precision)[0] is not None


def export_differences(path: Path, source: str, precision: str) -> tuple[str | None, list[str]]:
    """(the checkpoint's sha256, []) when :func:`reusable_export` holds (hashed once); otherwise
    (None, what differs), e.g. ``["shared attention qk (map wanted)"]``."""
    from .export.metadata import RANDOM_WEIGHTS, read_metadata
    from .export.trace import DEFAULT_OPSET

    if not path.is_file():
        return None, ["no export yet"]
    sha = source_sha256(source)
    if sha is None or sha == RANDOM_WEIGHTS:
        return None, ["random weights (exported afresh each time)"]
    try:
        meta = read_metadata(path)
    except PSViTError:
        return None, ["its metadata is unreadable"]
    sharing = meta.get("psvit.shared_attention")
    found = {
        "checkpoint": (meta.get("psvit.source_sha256"), sha),
        "precision": (meta.get("psvit.precision"), precision),
        "batch": (str(meta.get("psvit.batch")), "dynamic"),
        "opset": (str(meta.get("psvit.opset")), str(DEFAULT_OPSET)),
        "shared attention": (sharing.get("requested") if isinstance(sharing, dict) else None, "map"),
        "input/output precision": (meta.get("psvit.io_precision"), "fp32"),
    }
    differs = [f"{what} {have} ({want} wanted)" if what != "checkpoint" else "checkpoint sha256"
               for what, (have, want) in found.items() if have != want]
    return (sha, []) if not differs else (None, differs)


def reusable_engine(out: Path, request: Any) -> tuple[Any, list[str]]:
    """(the existing engine's sidecar, []) when ``out`` was built exactly as ``request``
    (:class:`psvit.export.tensorrt.EngineRequest`) asks; otherwise (None, what differs)."""
    from .runtime.tensorrt import read_sidecar

    if not out.exists():
        return None, ["no engine yet"]
    try:
        old = read_sidecar(out)
    except PSViTError as exc:
        return None, [str(exc).split(";")[0]]
    differs = [k for k, v in request.key.items() if old.build_key.get(k) != v]
    return (old, []) if not differs else (None, differs)


# ---- ONNX --------------------------------------------------------------------------------------------------
def export_step(source: str, out: Path, precision: str, *, data: Any = None, seed: int = 0,
                variant: str | None = None, force: bool = False, log: Log | None = None) -> OnnxStep:
    """``source`` (checkpoint, ``demo`` or variant) exported to ``out`` in ``precision`` (dynamic batch), or
    the export already there (:func:`reusable_export`)."""
    from .export import export_onnx

    say = log or (lambda _m: None)
    sha, differs = (None, ["--force"]) if force else export_differences(out, source, precision)
    if sha is not None:
        say(f"reusing {out} (exported from the same checkpoint with the same options)")
        return OnnxStep(out, precision, [f"reused {out.name} (same checkpoint sha256 {sha[:12]}…)"], reused=True)
    if out.exists():
        say(f"replacing {out}: {', '.join(differs)}")
    say(f"exporting {source} to {precision.upper()} ONNX {out}")
    result = export_onnx(source, out, fp16=precision == "fp16", data=data, seed=seed, variant=variant, log=say)
    if result.source.random_weights:
        say(f"WARNING: {result.source.description}")
    return OnnxStep(out, precision, [f"exported {result.source.description} to {out.name} ({precision.upper()}, "
                                     f"verified vs PyTorch)"], export=result)


def _recorded_checkpoint(onnx_path: Path, meta: dict[str, Any]) -> tuple[str, int]:
    """(source, seed) to export again the model an FP32 ONNX was exported from, checked by sha256."""
    from .export.metadata import RANDOM_WEIGHTS

    sha = meta.get("psvit.source_sha256")
    if sha == RANDOM_WEIGHTS and meta.get("psvit.variant"):
        return str(meta["psvit.variant"]), int(meta.get("psvit.seed") or 0)  # same seed, same weights
    described = str(meta.get("psvit.source", ""))
    ckpt = described.removeprefix("checkpoint ").strip()
    if described.startswith("checkpoint ") and Path(ckpt).is_file() and sha256_file(ckpt) == sha:
        return ckpt, 0
    raise ArtifactError(
        f"FP16 graphs are exported from their checkpoint (graph checks, verification against PyTorch); "
        f"{onnx_path.name} records '{described or 'no source'}', which is not here or has changed (sha256). Pass "
        f"the checkpoint as SOURCE, or an FP16 ONNX (psvit-export onnx CHECKPOINT --fp16)"
    )


def quantize_step(fp32: Path, out: Path, calibration: Calibration, target: Target, *,
                  force: bool = False, log: Log | None = None) -> OnnxStep:
    """The FP32 graph ``fp32`` quantized to Q/DQ INT8 at ``out``, its rest in the target's precision."""
    from .calibration import quantize_onnx

    say = log or (lambda _m: None)
    say(f"quantizing {fp32.name} to INT8 Q/DQ ({out.name}, rest {target.int8_rest.upper()} for {target.value}) "
        f"with {calibration.method} calibration")
    result = quantize_onnx(
        fp32, out, calib_data=calibration.data, calib_count=calibration.count, calib_batch=calibration.batch,
        calib_method=calibration.method, calib_cache=calibration.cache,
        force_recalibrate=calibration.force or force, keep_fp32=target.int8_rest == "fp32", log=say,
    )
    record = {"cache": str(result.cache_path), "cache_sha256": result.cache_sha256, "method": result.method,
              "cache_reused": result.cache_reused, "qdq_nodes": result.qdq_nodes}
    how = "reused calibration cache" if result.cache_reused else "calibrated"
    return OnnxStep(Path(result.path), "int8", [f"quantized to {Path(result.path).name}: {result.qdq_nodes} Q/DQ "
                                                 f"nodes ({how}), rest {result.precision_rest}"],
                    calibration=record, quantize=result)


def onnx_for(
    source: str | os.PathLike,
    precision: str,
    out: str | os.PathLike,
    *,
    target: Target | str = Target.TENSORRT,
    calibration: Calibration | None = None,
    fp32_out: str | os.PathLike | None = None,
    data: Any = None,
    seed: int = 0,
    variant: str | None = None,
    force: bool = False,
    log: Log | None = None,
) -> OnnxStep:
    """The ``precision`` ONNX graph of ``source`` for ``target``, written to ``out`` (or ``source`` itself
    when it already is that graph).

    Args:
        source: a checkpoint, ``demo``, a variant name or an ONNX file (FP32, FP16 or Q/DQ INT8).
        precision: ``fp32``, ``fp16`` or ``int8``.
        calibration: INT8 settings (required for INT8 unless ``source`` is a Q/DQ graph).
        fp32_out: where the FP32 export on the way to INT8 goes (default: next to ``out``, ``*.fp32.onnx``).
        data: images for export verification and FP16 value ranges (None: random images).
    """
    from .export.tensorrt.options import inspect_onnx_file, resolve_precision

    target = Target(target)
    text, out = str(source), Path(out)
    art = detect_artifact(text)
    if art.kind is ArtifactKind.ENGINE:
        raise ArtifactError(f"{text} is a TensorRT engine; start from a checkpoint or an ONNX file")
    if art.kind is ArtifactKind.ONNX:
        facts = inspect_onnx_file(text)
        wanted, conversion = resolve_precision(facts, fp16=precision == "fp16", int8=precision == "int8")
        if conversion is None:
            return OnnxStep(facts.path, wanted)
        if conversion == "fp16":
            ckpt, ckpt_seed = _recorded_checkpoint(facts.path, facts.metadata)
            return export_step(ckpt, out, "fp16", data=data, seed=ckpt_seed, force=force, log=log)
        return quantize_step(facts.path, out, _needs(calibration), target, force=force, log=log)
    if precision in ("fp32", "fp16"):
        return export_step(text, out, precision, data=data, seed=seed, variant=variant, force=force, log=log)
    calib = _needs(calibration)  # before minutes of export
    fp32 = export_step(text, Path(fp32_out) if fp32_out else derived_onnx_path(out, "fp32"), "fp32", data=data,
                       seed=seed, variant=variant, force=force, log=log)
    int8 = quantize_step(fp32.path, out, calib, target, force=force, log=log)
    int8.steps = fp32.steps + int8.steps
    return int8


def _needs(calibration: Calibration | None) -> Calibration:
    if calibration is None or calibration.data is None:
        from .export.errors import EngineBuildError

        raise EngineBuildError(NEED_CALIB)
    return calibration


# ---- engines -----------------------------------------------------------------------------------------------
def _engine_outputs(out: Path, onnx_path: Path, precision: str, conversion: str | None, art: Any,
                    calibration: Calibration | None, timing_cache: str | os.PathLike | None) -> list[Any]:
    """Every file :func:`engine` may write: the engine, its sidecar, the ONNX graphs and the calibration
    cache made on the way, the timing cache."""
    from .artifacts import sidecar_path
    from .outputs import Output, OutputKind

    outputs = [Output(out, OutputKind.ENGINE), Output(sidecar_path(out), OutputKind.JSON, "the sidecar")]
    if conversion is not None:  # an ONNX graph is made on the way
        outputs.append(Output(onnx_path, OutputKind.ONNX, "the ONNX made on the way"))
        if precision == "int8":
            from .calibration.cache import default_cache_path

            if art.kind is not ArtifactKind.ONNX:
                outputs.append(Output(derived_onnx_path(onnx_path, "fp32"), OutputKind.ONNX, "the FP32 ONNX export"))
            cache = calibration.cache if calibration is not None and calibration.cache else None
            outputs.append(Output(cache or default_cache_path(onnx_path), OutputKind.JSON, "--calib-cache"))
    outputs.append(Output(timing_cache, OutputKind.FILE, "--timing-cache"))
    return outputs


def _rebuild_settings(request: Any, out: Path, calibration: Calibration | None) -> dict[str, Any]:
    """:func:`psvit.export.tensorrt.build_settings` plus the calibration that made an INT8 graph."""
    from .export.tensorrt import build_settings

    settings = build_settings(out, request)
    if calibration is not None and isinstance(calibration.data, (str, os.PathLike)):
        settings.update(calib_data=str(calibration.data), calib_count=calibration.count,
                        calib_batch=calibration.batch, calib_method=calibration.method,
                        calib_cache=str(calibration.cache) if calibration.cache else None)
    return settings


def engine(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fp16: bool = False,
    int8: bool = False,
    calib_data: Any = None,
    calib_count: int | None = None,
    calib_batch: int | None = None,
    calib_method: str = "max",
    calib_cache: str | os.PathLike | None = None,
    batch: str | tuple[int, int, int] | None = None,
    workspace: str | int | None = None,
    optimization_level: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    builder: str = "auto",
    force: bool = False,
    seed: int = 0,
    onnx_out: str | os.PathLike | None = None,
    command: str | None = None,
    log: Log | None = None,
    progress: Log | None = None,
) -> Any:
    """A TensorRT engine ``out`` (+ sidecar) of ``source``, made or reused; returns an ``EngineResult``.

    Args:
        source: a checkpoint, ``demo``, a variant name, an FP32 ONNX (FP16 / INT8 graphs are made on the way)
            or an FP16 / Q/DQ ONNX (built as it is).
        fp16, int8: the precision to build; neither: the ONNX's own (FP32 for checkpoints).
        calib_*: INT8 calibration (``calib_data`` required when a Q/DQ graph has to be made).
        batch, workspace, optimization_level, timing_cache, builder: as
            :func:`psvit.export.tensorrt.build_engine_file`.
        force: rebuild, re-export and recalibrate even when existing files match.
        onnx_out: where the ONNX made on the way goes (default: next to ``out``: ``m.fp16.engine`` ->
            ``m.fp16.onnx``).
        command: the command line recorded in the sidecar for rebuilding (None: the equivalent
            ``psvit-export trt`` command).
    """
    from .export.errors import EngineBuildError
    from .export.tensorrt import check_engine_output, engine_request, resolve_builder, write_engine
    from .export.tensorrt.engine_file import check_build_options
    from .flags import trt_command
    from .outputs import check_outputs

    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    # Cheap checks first: bad options, a missing builder or TensorRT without a GPU fail before any export.
    if fp16 and int8:
        raise EngineBuildError("--fp16 and --int8 exclude each other; choose one")
    profile, _ = check_build_options(batch, workspace, optimization_level)
    out = check_engine_output(out, inputs=[source, calib_data])
    images = isinstance(calib_data, (str, os.PathLike)) and str(calib_data) != "synthetic"  # a folder or file
    if images and not Path(calib_data).exists():
        raise EngineBuildError(f"--calib-data {calib_data} does not exist; pass an image folder or a .npy/.npz file")
    text = str(source)
    calibration = (Calibration(calib_data, calib_count, calib_batch, calib_method, calib_cache, force)
                   if calib_data is not None else None)
    art = detect_artifact(text)
    if art.kind is ArtifactKind.ONNX:
        from .export.tensorrt.options import inspect_onnx_file, resolve_precision

        precision, conversion = resolve_precision(inspect_onnx_file(text), fp16=fp16, int8=int8)
    else:
        precision = conversion = "fp16" if fp16 else "int8" if int8 else "fp32"
        if int8 and calibration is None:
            raise EngineBuildError(NEED_CALIB)
    onnx_path = Path(onnx_out) if onnx_out else derived_onnx_path(out, precision,
                                                                  avoid=art.path if art.path else None)
    check_outputs(_engine_outputs(out, onnx_path, precision, conversion, art, calibration, timing_cache),
                  inputs=[source, calib_data])
    resolved = resolve_builder(builder)  # a missing builder or TensorRT without a GPU: before any export
    step = onnx_for(text, precision, onnx_path, target=Target.TENSORRT, calibration=calibration,
                    data=calib_data if fp16 and images else None,  # value ranges of the FP16 export
                    seed=seed, force=force, log=say)
    onnx_seconds = time.perf_counter() - t0
    request = engine_request(step.path, batch=profile, workspace=workspace, optimization_level=optimization_level,
                             timing_cache=timing_cache, builder=resolved)
    if request.precision != precision:
        raise EngineBuildError(f"{step.path.name} should be {precision.upper()} but its graph is "
                               f"{request.precision.upper()}; this is a bug in the conversion, please report it")
    if not force:
        old, differs = reusable_engine(out, request)
        if old is not None:
            say(f"reusing {out} (same ONNX, precision, profile, builder and target; --force rebuilds)")
            from .export.tensorrt import EngineResult

            return EngineResult(path=out, sidecar=old, reused=True, onnx_path=step.path, steps=step.steps,
                                seconds={"onnx": onnx_seconds})
        if out.exists():
            say(f"rebuilding {out}: {', '.join(differs)} differ(s) from the existing engine")
    command = command or trt_command(text, _rebuild_settings(request, out, calibration))
    result = write_engine(request, out, calibration=step.calibration, command=command, log=say, progress=progress)
    result.steps = step.steps
    result.seconds = {"onnx": onnx_seconds, **result.seconds}
    return result
