"""``build_engine_file``: an ONNX graph (FP32, FP16-typed or Q/DQ INT8) -> TensorRT plan ``FILE`` + sidecar
``FILE.json``. The stage takes its direct input; making that ONNX from a checkpoint, and deciding whether an
existing engine can be reused, is the pipeline's job (:mod:`psvit.pipeline`).

The precision is the graph's own (strongly typed builds). Where the engine can run (a GPU that runs it), its
layer precisions (engine inspector) and outputs (vs its ONNX on ONNX Runtime) are checked through the
runtime's TensorRT loading before anything is written; elsewhere the sidecar records why they did not run.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...artifacts import sidecar_path
from ...errors import PSViTError
from ...flags import trt_command
from ...outputs import Output, OutputKind, check_outputs
from ...provenance import atomic_output, package_versions, sha256_file
from ...runtime.tensorrt.sidecar import EngineSidecar, write_sidecar
from ..errors import EngineBuildError
from .build import DEFAULT_BATCH_PROFILE, Builder, build_engine, resolve_builder
from .options import OnnxFacts, inspect_onnx_file, parse_batch_profile, parse_size
from .timing_cache import cache_key, default_cache_path, load_cache, save_cache

__all__ = ["build_engine_file", "EngineResult", "EngineRequest", "engine_request", "write_engine",
           "check_engine_output", "check_build_options", "build_settings"]

VERSIONED_PACKAGES = ("onnx", "onnxruntime", "torch", "tensorrt", "tensorrt-rtx", "tensorrt_rtx")
MAX_REL_L2 = {"fp32": 1e-3, "fp16": 5e-3, "int8": 5e-2}  # engine vs its own ONNX (TF32 allowed in FP32)
PARITY_SAMPLES = 8
Log = Callable[[str], None]
_RTX_NO_CACHE = "not used: TensorRT-RTX has no timing cache (its timing-cache calls are no-ops since 1.2)"
_NOISE = re.compile(r"Thread context has not been set|getHardwareCompatibilityLevel\(\) is unsupported")


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

    def to_dict(self) -> dict[str, Any]:
        """For ``psvit-export trt --json``: the engine, whether it was reused, the steps, and its sidecar."""
        return {"path": str(self.path), "reused": self.reused, "onnx_path": str(self.onnx_path),
                "sidecar_path": str(self.sidecar_path), "steps": self.steps, "seconds": self.seconds,
                "warnings": self.warnings, "sidecar": self.sidecar.to_dict()}


@dataclass
class EngineRequest:
    """Everything that decides which engine a build produces; :attr:`key` is what reuse compares."""

    onnx: OnnxFacts
    onnx_sha256: str
    builder: Builder
    batch: tuple[int, int, int] | None  # the builder's profile argument; None for a static graph
    optimization_level: int | None
    workspace_bytes: int | None
    timing_cache: Path | None

    @property
    def precision(self) -> str:
        return self.onnx.precision

    @property
    def key(self) -> dict[str, Any]:
        """Compared with :attr:`EngineSidecar.build_key` of an existing engine."""
        return {
            "onnx_sha256": self.onnx_sha256, "precision": self.precision,
            "batch": None if self.onnx.static_batch else list(self.batch or DEFAULT_BATCH_PROFILE),
            "flavour": self.builder.name, "version": self.builder.version, "target": self.builder.target["key"],
            "optimization_level": self.optimization_level, "workspace_bytes": self.workspace_bytes,
        }


def check_engine_output(out: str | os.PathLike, inputs: Iterable[Any] = ()) -> Path:
    """Fail early on an engine path (or its sidecar ``FILE.json``) that cannot be written or is one of
    ``inputs``."""
    out = Path(out)
    check_outputs([Output(out, OutputKind.ENGINE), Output(sidecar_path(out), OutputKind.JSON, "the sidecar")],
                  inputs=inputs)
    return out


def check_build_options(batch: str | tuple[int, int, int] | None, workspace: str | int | None,
                        optimization_level: int | None) -> tuple[tuple[int, int, int] | None, int | None]:
    """(batch profile, workspace bytes) from the options; bad values raise before any work."""
    profile = parse_batch_profile(":".join(map(str, batch)) if isinstance(batch, tuple) else batch)
    workspace_bytes = parse_size(workspace)
    if optimization_level is not None and not 0 <= optimization_level <= 5:
        raise EngineBuildError(f"--optimization-level must be 0..5, got {optimization_level}")
    return profile, workspace_bytes


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


def engine_request(
    onnx_path: str | os.PathLike,
    *,
    batch: str | tuple[int, int, int] | None = None,
    workspace: str | int | None = None,
    optimization_level: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    builder: str | Builder = "auto",
) -> EngineRequest:
    """What building ``onnx_path`` with these options means here (no build yet; cheap)."""
    profile, workspace_bytes = check_build_options(batch, workspace, optimization_level)
    resolved = builder if isinstance(builder, Builder) else resolve_builder(builder)
    facts = inspect_onnx_file(onnx_path)
    return EngineRequest(onnx=facts, onnx_sha256=sha256_file(facts.path), builder=resolved,
                         batch=_profile_batch(facts, profile), optimization_level=optimization_level,
                         workspace_bytes=workspace_bytes, timing_cache=Path(timing_cache) if timing_cache else None)


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


def build_settings(out: str | os.PathLike, request: EngineRequest) -> dict[str, Any]:
    """The ``psvit-export trt`` settings (keys of :data:`TRT_FLAGS`) that rebuild ``request`` into ``out``:
    every part of the reuse key, the precision and ``--force``."""
    return {"out": str(out), "fp16": request.precision == "fp16", "int8": request.precision == "int8",
            "batch": request.key["batch"], "workspace": request.workspace_bytes,
            "optimization_level": request.optimization_level,
            "timing_cache": str(request.timing_cache) if request.timing_cache else None,
            "builder": request.builder.name.replace("_", "-"), "force": True}


def write_engine(
    request: EngineRequest,
    out: str | os.PathLike,
    *,
    command: str | None = None,
    calibration: dict[str, Any] | None = None,
    log: Log | None = None,
    progress: Log | None = None,
) -> EngineResult:
    """Build the engine ``request`` describes, check it where it can run, write sidecar then plan.

    Args:
        command: the command line recorded in the sidecar for rebuilding (None: one for this ONNX).
        calibration: the INT8 calibration record (None: read from the ONNX's metadata).
    """
    say = log or (lambda _msg: None)
    out = check_engine_output(out, inputs=[request.onnx.path])
    facts, b = request.onnx, request.builder
    onnx_path = facts.path
    notes: list[str] = []

    loaded = None
    if b.name == "tensorrt":  # TensorRT-RTX ignores timing caches
        key = cache_key(b.name, b.version, b.target["key"])
        loaded = load_cache(request.timing_cache or default_cache_path(key), key)
        if loaded.blob is None and loaded.path.exists():
            notes.append(loaded.note)
        say(loaded.note)
    elif request.timing_cache is not None:
        notes.append(f"--timing-cache {request.timing_cache} ignored: {_RTX_NO_CACHE[len('not used: '):]}")

    say(f"building an {request.precision.upper()} engine with {b.name} {b.version} "
        f"({'GPU ' + b.device.name if b.device else 'ahead of time, no GPU present'})")
    build = build_engine(onnx_path, builder=b, batch=request.batch, optimization_level=request.optimization_level,
                         workspace_bytes=request.workspace_bytes, timing_cache=loaded.blob if loaded else None,
                         use_timing_cache=loaded is not None, progress=progress)
    notes.extend(w for w in build.warnings if not _NOISE.search(w))

    meta = facts.metadata
    sidecar = EngineSidecar(
        engine_file=out.name, engine_sha256=hashlib.sha256(build.plan).hexdigest(), engine_bytes=len(build.plan),
        flavour=b.name, version=b.version,
        device_name=b.device.name if b.device else None,
        compute_capability=b.device.compute_capability if b.device else None,
        target=b.target, precision=request.precision, batch=request.key["batch"], profile=build.profile,
        static_shapes=None if build.profile else {facts.input_name: [int(d) for d in facts.input_shape]},
        onnx_path=str(onnx_path), onnx_sha256=request.onnx_sha256,
        calibration=calibration if calibration is not None else (
            _calibration_from_metadata(meta) if request.precision == "int8" else None),
        **_model_fields(meta),
        source={"description": meta.get("psvit.source") or str(onnx_path),
                "sha256": meta.get("psvit.source_sha256"), "random_weights": bool(meta.get("psvit.random_weights"))},
        build_options={"optimization_level": request.optimization_level, "workspace_bytes": request.workspace_bytes,
                       "timing_cache": loaded.note if loaded is not None else _RTX_NO_CACHE,
                       "profiling_verbosity": "detailed"},
        build_seconds=round(build.seconds, 3),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        versions=package_versions(*VERSIONED_PACKAGES), psvit_deploy_version=package_versions().get("psvit-deploy"),
        command=command or trt_command(onnx_path, build_settings(out, request)), warnings=notes,
    )
    precision_check, parity = check_engine(build.plan, sidecar, onnx_path, facts, say)
    sidecar.precision_check = {**precision_check, "parity": parity}

    # Sidecar first (with the plan's sha256), then the plan: see psvit.runtime.tensorrt.sidecar.
    with atomic_output(out, suffix=".engine") as tmp:
        tmp.write_bytes(build.plan)
        write_sidecar(sidecar, out)
    if loaded is not None and build.timing_cache_blob:
        save_cache(loaded.path, loaded.key, build.timing_cache_blob)
    say(f"wrote {out} ({len(build.plan) / 1e6:.1f} MB) and {sidecar_path(out).name}")
    return EngineResult(path=out, sidecar=sidecar, reused=False, onnx_path=onnx_path,
                        seconds={"build": build.seconds}, warnings=notes)


def check_engine(plan: bytes, sidecar: EngineSidecar, onnx_path: Path, facts: OnnxFacts,
                 say: Log) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inspector precisions and parity with the ONNX on ONNX Runtime, through the runtime's TensorRT loading
    (the same code that serves the engine later); where the engine cannot run here, say why not."""
    from ...runtime import Runtime, load
    from ...runtime.tensorrt import detect_device
    from ...runtime.tensorrt.backend import TensorRTBackend
    from ..inputs import sample_inputs
    from ..verify import compare, require_close
    from .inspect import check_layer_precisions

    if detect_device() is None:
        why = "not run: no GPU here (deserializing a plan, and so the engine inspector, needs one)"
        return {"status": why}, {"status": why}
    try:
        backend = TensorRTBackend(plan, sidecar=sidecar)
    except PSViTError as exc:
        first = str(exc).splitlines()[0]
        return {"status": f"not run: {first}"}, {"status": f"not run: the engine cannot be loaded here ({first})"}
    with Runtime(backend, name=f"{sidecar.precision.upper()} engine") as engine:
        say("checking per-layer precisions (engine inspector)")
        report = check_layer_precisions(backend.loaded.layer_information(), sidecar.precision)
        say("comparing the engine with its ONNX on ONNX Runtime")
        shape = tuple(int(d) for d in facts.input_shape[1:])
        inputs = sample_inputs(None, count=PARITY_SAMPLES, input_shape=shape,
                               preprocess=facts.metadata.get("psvit.preprocess"))
        with load(onnx_path, name=f"ONNX {onnx_path.name}") as reference:
            comparison = compare(reference, engine, inputs, max_rel_l2=MAX_REL_L2[sidecar.precision])
    require_close(comparison, f"{sidecar.precision.upper()} engine vs {onnx_path.name}", "The engine was not written.")
    return ({"status": "passed", **report.to_dict()},
            {"status": "passed", "rel_l2": comparison.worst_rel_l2, "max_rel_l2": comparison.max_rel_l2,
             "top1_agreement": comparison.top1_agreement, "samples": comparison.samples})


def build_engine_file(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch: str | tuple[int, int, int] | None = None,
    workspace: str | int | None = None,
    optimization_level: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    builder: str = "auto",
    command: str | None = None,
    log: Log | None = None,
    progress: Log | None = None,
) -> EngineResult:
    """Build the engine ``out`` (+ sidecar) from ``onnx_path`` as it is; see the module docstring.

    Args:
        batch: ``"MIN:OPT:MAX"``, ``"N"`` or a tuple; None means 1:8:32 for a dynamic batch.
        workspace: workspace limit, bytes or a size like ``"512M"``/``"2G"``; None: TensorRT's default.
        optimization_level: builder optimization level 0..5 (None: TensorRT's default 3).
        timing_cache: timing cache file (None: one per builder version and GPU in the user cache folder).
        builder: ``auto`` | ``tensorrt`` | ``tensorrt-rtx``.
        command: the command line recorded in the sidecar for rebuilding (None: a generic one).
        log: one line per stage; progress: the builder's phase lines while it builds.
    """
    t0 = time.perf_counter()
    check_engine_output(out, inputs=[onnx_path, timing_cache])
    request = engine_request(onnx_path, batch=batch, workspace=workspace, optimization_level=optimization_level,
                             timing_cache=timing_cache, builder=builder)
    result = write_engine(request, out, command=command, log=log, progress=progress)
    result.seconds["total"] = time.perf_counter() - t0
    return result
