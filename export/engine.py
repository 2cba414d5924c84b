"""``build_engine_file``: SOURCE -> [ONNX export / FP16 conversion / INT8 quantization] -> TensorRT plan
``FILE`` + sidecar ``FILE.json``, reusing an engine built the same way. Also the sidecar API for runtimes.

SOURCE is a checkpoint, ``demo``, a variant name, an FP32 ONNX (FP16/INT8 graphs are made from it on the
way) or an FP16/Q-DQ ONNX (built as it is). Intermediate ONNX files are kept next to the engine
(``model.fp16.engine`` -> ``model.fp16.onnx``); they are what the sidecar's ONNX sha256 refers to.

Reuse: an existing ``FILE`` whose sidecar records the same ONNX sha256, precision, batch profile, builder
flavour and version, target (GPU or AOT compute capabilities) and build options is kept ("reusing …")
unless ``force``. Where the engine can run (``tensorrt`` and a GPU), its layer precisions (engine
inspector) and outputs (vs its ONNX on ONNX Runtime) are checked before anything is written.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, PSViTError
from ..provenance import atomic_output, check_output_folder, package_versions, sha256_file
from .engine_options import (
    OnnxFacts, inspect_onnx_file, parse_batch_profile, parse_size, resolve_precision,
)
from .errors import EngineBuildError
from .sidecar import (
    EngineSidecar, check_sidecar, normalise_flavour, read_sidecar, sidecar_path, write_sidecar,
)
from .timing_cache import cache_key, default_cache_path, load_cache, save_cache

__all__ = ["build_engine_file", "EngineResult", "EngineSidecar", "read_sidecar", "check_sidecar", "sidecar_path"]

VERSIONED_PACKAGES = ("onnx", "onnxruntime", "torch", "tensorrt", "tensorrt-rtx", "tensorrt_rtx")
Log = Callable[[str], None]
_RTX_NO_CACHE = "not used: TensorRT-RTX has no timing cache (its timing-cache calls are no-ops since 1.2)"
_NOISE = re.compile(r"Thread context has not been set|getHardwareCompatibilityLevel\(\) is unsupported")
_NEED_CALIB = ("--int8 needs calibration images: add --calib-data DIR (an image folder or .npy/.npz of "
               "preprocessed images); random data is never used")


@dataclass
class EngineResult:
    """An engine on disk and how it came to be."""

    path: Path
    sidecar: EngineSidecar
    reused: bool
    onnx_path: Path
    steps: list[str] = field(default_factory=list)  # what was done on the way (export, conversion, ...)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.path)


def check_engine_output(out: str | os.PathLike) -> Path:
    """Fail early on an engine path that cannot be written."""
    out = Path(out)
    if out.is_dir():
        raise EngineBuildError(f"--out {out} is a folder; name an engine file, e.g. {out / 'model.engine'}")
    if out.suffix == ".onnx" or out.name.endswith(".json"):
        raise EngineBuildError(f"--out {out}: an engine file should not end in {out.suffix}; use e.g. .engine")
    check_output_folder(out, EngineBuildError)
    return out


def derived_onnx_path(out: Path, precision: str, avoid: Path | None = None) -> Path:
    """Where the ``precision`` ONNX made on the way to ``out`` is kept: ``model.fp16.engine`` -> ``model.fp16.onnx``."""
    from ..runtime.api import ENGINE_SUFFIXES

    base = out.name
    for suffix in ENGINE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    for tag in (".fp32", ".fp16", ".int8"):
        if base.endswith(tag):
            base = base[: -len(tag)]
    path = out.with_name(f"{base}.{precision}.onnx")
    if avoid is not None and path.resolve() == avoid.resolve():
        path = out.with_name(f"{base}.{precision}.build.onnx")
    return path


def _is_onnx_source(source: str) -> bool:
    from ..runtime.api import CHECKPOINT_SUFFIXES

    if source.endswith(".onnx"):
        return True
    path = Path(source)
    if not path.is_file() or path.suffix in CHECKPOINT_SUFFIXES:
        return False
    with open(path, "rb") as f:  # an ONNX ModelProto starts with field 1 (ir_version, varint): byte 0x08
        return f.read(1) == b"\x08"


def _existing_metadata(path: Path) -> dict[str, Any]:
    """The metadata of an earlier intermediate ONNX at ``path``; {} (so it is remade) when unreadable."""
    try:
        return inspect_onnx_file(path).metadata
    except EngineBuildError:
        return {}


def _export(source: str, out: Path, precision: str, force: bool, seed: int, say: Log) -> tuple[Path, str]:
    """Export a checkpoint/``demo``/variant to ``out`` (dynamic batch); keep a matching earlier export."""
    from .onnx_export import export_onnx
    from .sources import load_source

    if out.is_file() and not force:
        src_sha = load_source(source, seed=seed).sha256
        meta = _existing_metadata(out)
        if (src_sha and meta.get("psvit.source_sha256") == src_sha and meta.get("psvit.precision") == precision
                and str(meta.get("psvit.batch")) == "dynamic"):
            say(f"reusing {out} (exported from the same checkpoint)")
            return out, f"reused {out.name} (same checkpoint sha256 {src_sha[:12]}…)"
    say(f"exporting {source} to {precision.upper()} ONNX {out}")
    result = export_onnx(source, out, fp16=precision == "fp16", seed=seed, log=say)
    if result.source.random_weights:
        say(f"WARNING: {result.source.description}")
    return out, f"exported {result.source.description} to {out.name} ({precision.upper()}, verified vs PyTorch)"


def _convert_fp16(fp32: Path, out: Path, data: str | None, force: bool, say: Log) -> tuple[Path, str]:
    """FP32 ONNX -> FP16-typed ONNX (psvit.export.convert_fp16), verified on ONNX Runtime against the FP32."""
    import onnx

    from .fp16 import convert_fp16
    from .inputs import sample_inputs
    from .metadata import PREFIX, set_metadata
    from .runners import OnnxRuntimeRunner
    from .save import atomic_onnx_output, save_onnx
    from .verify import FP16_MAX_REL_L2, compare, require_close

    parent_sha = sha256_file(fp32)
    if out.is_file() and not force and _existing_metadata(out).get(PREFIX + "parent_onnx_sha256") == parent_sha:
        say(f"reusing {out} (converted from the same FP32 ONNX)")
        return out, f"reused {out.name} (FP16 of the same FP32 ONNX)"
    say(f"converting {fp32.name} to FP16 ({out.name})")
    model = onnx.load(str(fp32))
    reference = OnnxRuntimeRunner(fp32, name=f"ONNX FP32 ({fp32.name})")
    inputs = sample_inputs(data, count=8, input_shape=reference.input_shape, preprocess=reference.preprocess)
    converted, report = convert_fp16(model, inputs)
    meta = {p.key: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}  # as written, not re-encoded
    meta.update({PREFIX + "precision": "fp16", PREFIX + "io_precision": "fp32",
                 PREFIX + "fp16": json.dumps(report.to_dict()), PREFIX + "parent_onnx_sha256": parent_sha})
    set_metadata(converted, meta)
    with atomic_onnx_output(out) as tmp:
        save_onnx(converted, tmp, data_name=f"{out.name}.data")
        check = compare(reference, OnnxRuntimeRunner(tmp, name=f"ONNX FP16 ({out.name})"), inputs,
                        max_rel_l2=FP16_MAX_REL_L2)
        require_close(check, "ONNX FP16 vs FP32", "The FP16 ONNX and the engine were not written.")
    return out, f"converted {fp32.name} to FP16 {out.name} (rel L2 {check.worst_rel_l2:.2e} vs FP32)"


def _quantize(fp32: Path, out: Path, calib: dict[str, Any], force: bool, say: Log) -> tuple[Path, str, dict[str, Any]]:
    """FP32 ONNX -> Q/DQ INT8 ONNX through :func:`psvit.calibration.quantize_onnx`."""
    try:
        from ..calibration import quantize_onnx
    except ImportError as exc:
        raise MissingDependencyError(
            f"INT8 engines need psvit.calibration.quantize_onnx, which cannot be imported ({exc}); install "
            f"psvit-deploy with its calibration dependencies: pip install 'psvit-deploy[onnx]'"
        ) from exc
    say(f"quantizing {fp32.name} to INT8 Q/DQ ({out.name}) with {calib['method']} calibration")
    result = quantize_onnx(
        fp32, out, calib_data=calib["data"], calib_count=calib["count"], calib_batch=calib["batch"],
        method=calib["method"], cache_path=calib["cache"], force_recalibrate=force, log=say,
    )
    record = {"cache": str(result.cache_path), "cache_sha256": result.cache_sha256, "method": result.method,
              "cache_reused": result.cache_reused, "qdq_nodes": result.qdq_nodes}
    how = "reused calibration cache" if result.cache_reused else "calibrated"
    return Path(result.path), f"quantized to {Path(result.path).name}: {result.qdq_nodes} Q/DQ nodes ({how})", record


def _calibration_from_metadata(meta: dict[str, Any]) -> dict[str, Any] | None:
    calib = meta.get("psvit.calibration")
    if not isinstance(calib, dict):
        return None
    keys = ("cache_sha256", "method", "cache_path", "cache")
    return {k: calib[k] for k in keys if k in calib} or {"recorded": calib}


def _model_fields(meta: dict[str, Any]) -> dict[str, Any]:
    cfg = meta.get("psvit.config")
    return {
        "model_config": cfg if isinstance(cfg, dict) else None,
        "variant": meta.get("psvit.variant") or None,
        "class_names": meta.get("psvit.class_names") if isinstance(meta.get("psvit.class_names"), list) else None,
        "preprocess": meta.get("psvit.preprocess") if isinstance(meta.get("psvit.preprocess"), dict) else None,
    }


def _profile_batch(facts: OnnxFacts, batch: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
    """The batch argument for the builder: None for a static graph (whose batch a 1-point --batch must equal)."""
    static = facts.static_batch
    if static is None:
        return batch
    if batch is None or batch == (static, static, static):
        return None
    raise EngineBuildError(
        f"{facts.path.name} has a fixed batch {static}; --batch must be {static} or left out (for a batch range "
        f"export the ONNX with a dynamic batch: psvit-export onnx --batch dynamic)"
    )


def _generic_command(source: str, out: Path, precision: str, calib: dict[str, Any], batch: tuple[int, int, int] | None,
                     flavour: str) -> str:
    parts = ["psvit-export", "trt", source, "--out", str(out)]
    if precision in ("fp16", "int8"):
        parts.append(f"--{precision}")
    if precision == "int8" and calib.get("data"):
        parts += ["--calib-data", str(calib["data"])]
    if batch:
        parts += ["--batch", ":".join(map(str, batch))]
    parts += ["--builder", flavour.replace("_", "-"), "--force"]
    return " ".join(parts)


def build_engine_file(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fp16: bool = False,
    int8: bool = False,
    calib_data: str | os.PathLike | None = None,
    calib_count: int | None = None,
    calib_batch: int | None = None,
    calib_method: str = "max",
    calib_cache: str | os.PathLike | None = None,
    batch: str | tuple[int, int, int] | None = None,
    workspace: str | int | None = None,
    optimization_level: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    flavour: str = "auto",
    force: bool = False,
    seed: int = 0,
    command: str | None = None,
    log: Log | None = None,
    progress: Log | None = None,
) -> EngineResult:
    """Build (or reuse) the engine ``out`` from ``source``; see the module docstring.

    Args:
        fp16, int8: the precision to build; None of them: the ONNX's own precision (FP32 for checkpoints).
        calib_*: INT8 calibration (``calib_data`` required when a Q/DQ graph has to be made).
        batch: ``"MIN:OPT:MAX"``, ``"N"`` or a tuple; None means 1:8:32 for a dynamic batch.
        workspace: workspace limit, bytes or a size like ``"512M"``/``"2G"``; None: TensorRT's default.
        optimization_level: builder optimization level 0..5 (None: TensorRT's default 3).
        timing_cache: timing cache file (None: one per builder version and GPU in the user cache folder).
        flavour: ``auto`` | ``tensorrt`` | ``tensorrt_rtx`` (``tensorrt-rtx`` accepted).
        force: rebuild (and re-export/re-calibrate) even when an existing engine matches.
        command: the command line recorded in the sidecar for rebuilding (None: a generic one).
        log: one line per stage; progress: the builder's phase lines while it builds.
    """
    from .trt_build import DEFAULT_BATCH_PROFILE, build_engine, build_target, detect_device, import_tensorrt

    say = log or (lambda _msg: None)
    times: dict[str, float] = {}
    steps: list[str] = []
    notes: list[str] = []
    # Cheap checks first: bad options fail before any export or build.
    if fp16 and int8:
        raise EngineBuildError("--fp16 and --int8 exclude each other; choose one")
    profile = parse_batch_profile(":".join(map(str, batch)) if isinstance(batch, tuple) else batch)
    workspace_bytes = parse_size(workspace)
    if optimization_level is not None and not 0 <= optimization_level <= 5:
        raise EngineBuildError(f"--opt-level must be 0..5, got {optimization_level}")
    out = check_engine_output(out)
    if calib_data is not None and not Path(calib_data).exists() and str(calib_data) != "synthetic":
        raise EngineBuildError(f"--calib-data {calib_data} does not exist; pass an image folder or a .npy/.npz file")
    flavour = normalise_flavour(flavour)
    trt, name = import_tensorrt(flavour)  # a missing builder fails before minutes of export work
    device = detect_device()
    target = build_target(name, trt, device)  # TensorRT without a GPU fails here, before any export
    source_text = str(source)
    calib = {"data": str(calib_data) if calib_data is not None else None, "count": calib_count,
             "batch": calib_batch, "method": calib_method, "cache": str(calib_cache) if calib_cache else None}

    # 1. The ONNX to build.
    t0 = time.perf_counter()
    if _is_onnx_source(source_text):
        facts = inspect_onnx_file(source_text)
        onnx_path = facts.path
    else:
        if int8 and calib_data is None:  # before minutes of export
            raise EngineBuildError(_NEED_CALIB)
        onnx_path, step = _export(source_text, derived_onnx_path(out, "fp16" if fp16 else "fp32"),
                                  "fp16" if fp16 else "fp32", force, seed, say)
        steps.append(step)
        facts = inspect_onnx_file(onnx_path)
    precision, conversion = resolve_precision(facts, fp16=fp16, int8=int8)
    calibration = _calibration_from_metadata(facts.metadata) if precision == "int8" else None
    if conversion == "fp16":
        onnx_path, step = _convert_fp16(onnx_path, derived_onnx_path(out, "fp16", avoid=onnx_path),
                                        calib["data"], force, say)
        steps.append(step)
    elif conversion == "int8":
        if calib_data is None:
            raise EngineBuildError(_NEED_CALIB)
        onnx_path, step, calibration = _quantize(onnx_path, derived_onnx_path(out, "int8", avoid=onnx_path), calib,
                                                 force, say)
        steps.append(step)
    if conversion is not None:
        facts = inspect_onnx_file(onnx_path)
        if facts.precision != precision:
            raise EngineBuildError(f"{onnx_path.name} should be {precision.upper()} but its graph is "
                                   f"{facts.precision.upper()}; this is a bug in the conversion, please report it")
    times["onnx"] = time.perf_counter() - t0
    build_batch = _profile_batch(facts, profile)
    onnx_sha = sha256_file(onnx_path)
    request = {
        "onnx_sha256": onnx_sha, "precision": precision,
        "batch": None if facts.static_batch else list(build_batch or DEFAULT_BATCH_PROFILE),
        "flavour": name, "version": trt.__version__, "target": target["key"],
        "optimization_level": optimization_level, "workspace_bytes": workspace_bytes,
    }
    rebuild_command = command or _generic_command(source_text, out, precision, calib, build_batch, name)

    # 2. Reuse.
    if out.exists() and not force:
        try:
            old = read_sidecar(out)
            differs = [k for k, v in request.items() if old.build_key.get(k) != v]
        except PSViTError as exc:
            differs = [str(exc).split(";")[0]]
        if not differs:
            say(f"reusing {out} (same ONNX, precision, profile, builder and target; --force rebuilds)")
            return EngineResult(path=out, sidecar=old, reused=True, onnx_path=onnx_path, steps=steps,
                                seconds=times, warnings=notes)
        say(f"rebuilding {out}: {', '.join(differs)} differ(s) from the existing engine")

    # 3. Timing cache (TensorRT only: TensorRT-RTX ignores it).
    loaded = None
    if name == "tensorrt":
        key = cache_key(name, trt.__version__, target["key"])
        loaded = load_cache(Path(timing_cache) if timing_cache else default_cache_path(key), key)
        if loaded.blob is None and loaded.path.exists():
            notes.append(loaded.note)
        say(loaded.note)
    elif timing_cache is not None:
        notes.append(f"--timing-cache {timing_cache} ignored: {_RTX_NO_CACHE[len('not used: '):]}")

    # 4. Build.
    say(f"building an {precision.upper()} engine with {name} {trt.__version__} "
        f"({'GPU ' + device.name if device else 'ahead of time, no GPU present'})")
    build = build_engine(onnx_path, flavour=name, batch=build_batch, optimization_level=optimization_level,
                         workspace_bytes=workspace_bytes, timing_cache=loaded.blob if loaded else None,
                         use_timing_cache=loaded is not None, progress=progress, device=device)
    times["build"] = build.seconds
    notes.extend(w for w in build.warnings if not _NOISE.search(w))

    # 5. Checks where the engine can run: layer precisions and outputs vs the ONNX.
    precision_check, parity = _check_engine(trt, name, build, onnx_path, precision, facts, device, say)

    # 6. Write: sidecar first (with the plan's sha256), then the plan (see psvit.export.sidecar).
    import hashlib

    meta = facts.metadata
    source_sha = meta.get("psvit.source_sha256")
    sidecar = EngineSidecar(
        engine_file=out.name, engine_sha256=hashlib.sha256(build.plan).hexdigest(), engine_bytes=len(build.plan),
        flavour=name, version=trt.__version__,
        device_name=device.name if device else None, compute_capability=device.compute_capability if device else None,
        target=target, precision=precision, batch=request["batch"], profile=build.profile,
        static_shapes=None if build.profile else {facts.input_name: [int(d) for d in facts.input_shape]},
        onnx_path=str(onnx_path), onnx_sha256=onnx_sha, calibration=calibration, **_model_fields(meta),
        source={"description": meta.get("psvit.source") or source_text, "sha256": source_sha,
                "random_weights": bool(meta.get("psvit.random_weights"))},
        build_options={"optimization_level": optimization_level, "workspace_bytes": workspace_bytes,
                       "timing_cache": loaded.note if loaded is not None else _RTX_NO_CACHE,
                       "profiling_verbosity": "detailed"},
        build_seconds=round(build.seconds, 3),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        versions=package_versions(*VERSIONED_PACKAGES), psvit_deploy_version=package_versions().get("psvit-deploy"),
        command=rebuild_command, precision_check={**precision_check, "parity": parity}, warnings=notes,
    )
    with atomic_output(out, suffix=".engine") as tmp:
        tmp.write_bytes(build.plan)
        write_sidecar(sidecar, out)
    if loaded is not None and build.timing_cache_blob:
        save_cache(loaded.path, loaded.key, build.timing_cache_blob)
    say(f"wrote {out} ({len(build.plan) / 1e6:.1f} MB) and {sidecar_path(out).name}")
    return EngineResult(path=out, sidecar=sidecar, reused=False, onnx_path=onnx_path, steps=steps, seconds=times,
                        warnings=notes)


def _check_engine(trt: Any, name: str, build: Any, onnx_path: Path, precision: str, facts: OnnxFacts,
                  device: Any, say: Log) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inspector precisions and ONNX Runtime parity where the engine can run; otherwise say why not."""
    if device is None:
        why = "not run: no GPU here (deserializing a plan, and so the engine inspector, needs one)"
        return {"status": why}, {"status": why}
    from .engine_inspect import check_layer_precisions, engine_information
    from .engine_verify import verify_engine
    from .inputs import sample_inputs
    from .trt_build import _logger
    from .verify import require_close

    logger = _logger(trt, name)
    try:
        info = engine_information(trt, build.plan, logger)
    except EngineBuildError as exc:
        return {"status": f"not run: {exc}"}, {"status": "not run: the engine cannot be deserialized here"}
    say("checking per-layer precisions (engine inspector)")
    report = check_layer_precisions(info, precision)
    say("comparing the engine with its ONNX on ONNX Runtime")
    shape = tuple(int(d) for d in facts.input_shape[1:])
    inputs = sample_inputs(None, count=8, input_shape=shape, preprocess=facts.metadata.get("psvit.preprocess"))
    comparison = verify_engine(trt, build.plan, logger, onnx_path, precision, inputs,
                               max_batch=(build.batch or (None, None, None))[2])
    require_close(comparison, f"{precision.upper()} engine vs {onnx_path.name}", "The engine was not written.")
    return ({"status": "passed", **report.to_dict()},
            {"status": "passed", "rel_l2": comparison.worst_rel_l2, "max_rel_l2": comparison.max_rel_l2,
             "top1_agreement": comparison.top1_agreement, "samples": comparison.samples})
