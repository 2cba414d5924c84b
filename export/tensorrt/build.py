"""Build a serialized TensorRT engine from an ONNX file, with TensorRT 10.x/11.x or TensorRT-RTX.

All three share the strongly-typed builder API: precision comes from the ONNX types (an FP16-typed graph
builds FP16, Q/DQ builds INT8), never from builder flags (TensorRT 11 removed BuilderFlag.FP16/INT8).
TensorRT 10.x needs the STRONGLY_TYPED creation flag; 11.x and TensorRT-RTX are always strongly typed.

Why the TensorRT API directly and not Polygraphy's loaders: Polygraphy picks TensorRT or TensorRT-RTX from
the environment variable ``POLYGRAPHY_USE_TENSORRT_RTX`` read at import time, so one process cannot choose
per call, and its ``NetworkFromOnnxPath`` reports parser failures as a generic exception. The builder calls
we need (network, parser, one optimization profile, builder optimization level, workspace) are ten lines
of the shared API, and parser errors can be reported node by node.

TensorRT-RTX builds ahead of time on a machine without a GPU (CI does this); running its engines needs an
RTX-class GPU. What TensorRT-RTX 1.7 does without a GPU (checked here): it builds for every compute
capability it supports (set explicitly below, so the sidecar can record the target); timing-cache calls are
accepted but are no-ops (deprecated since TensorRT-RTX 1.2: it tunes on the target GPU), so no timing cache is
used with it; ``IProgressMonitor`` reports the build phases; deserializing a plan (and so the engine
inspector) needs a GPU. Ctrl-C and SIGTERM cancel a build through the progress monitor (see
:func:`_signals_held`). Measured build times with TensorRT-RTX 1.7 on 2 shared CPU cores, optimization level 0:
psvit_micro 0.8-2 s (FP32 or FP16), DeiT-Tiny FP32 224x224 about 3 s, PSViT-2D-Tiny about 3 s,
DeiT-Small FP16 about 1.5 s.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ...provenance import atomic_output
from ...runtime.tensorrt import (
    FLAVOURS, DeviceInfo, capture, detect_device, import_tensorrt, normalise_flavour, trt_logger,
)
from ...runtime.tensorrt.logger import LOG
from ..errors import EngineBuildError

BUILDERS = ("auto", *FLAVOURS)
DEFAULT_BATCH_PROFILE = (1, 8, 32)  # min, opt, max for graphs with a dynamic batch


@dataclass
class EngineBuild:
    """A built engine and how it was built (the plan stays raw: provenance belongs in a sidecar)."""

    plan: bytes
    flavour: str  # "tensorrt" | "tensorrt_rtx"
    version: str
    seconds: float
    onnx_path: str
    profile: dict[str, list[list[int]]] | None  # input -> [min, opt, max] shapes; None for static graphs
    optimization_level: int | None
    warnings: list[str] = field(default_factory=list)
    workspace_bytes: int | None = None
    device: DeviceInfo | None = None  # the GPU it was built on; None for an ahead-of-time build
    target: dict[str, Any] = field(default_factory=dict)  # what the plan runs on (see :func:`build_target`)
    timing_cache: str = "not used"  # what happened to the timing cache, in words
    batch: tuple[int, int, int] | None = None  # (min, opt, max) of the profile; None for a static graph
    timing_cache_blob: bytes | None = field(default=None, repr=False)  # the updated cache (TensorRT only)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan atomically."""
        path = Path(path)
        with atomic_output(path, suffix=".engine") as tmp:
            tmp.write_bytes(self.plan)
        return path


def rtx_compute_capabilities(trt: ModuleType) -> list[Any]:
    """The compute capabilities an ahead-of-time TensorRT-RTX build targets: Ampere (8.0) and newer.

    Turing (7.5) is left out: TensorRT-RTX 1.7 cannot compile FP32 GEMMs for it ("Cannot compile operation
    ... for Turing (SM75): FP32 GEMM is not supported"), and PSViT graphs have FP32 GEMMs at every precision
    (FP32 engines; the classifier head of FP16/INT8 graphs may stay FP32)."""
    return [v for k, v in trt.ComputeCapability.__members__.items() if k.startswith("SM") and int(v) >= 80]


def cc_text(value: Any) -> str:
    """``ComputeCapability.SM86`` -> ``"8.6"``, ``SM120`` -> ``"12.0"``."""
    digits = str(int(value))
    return f"{digits[:-1]}.{digits[-1]}"


def build_target(name: str, trt: ModuleType, device: DeviceInfo | None) -> dict[str, Any]:
    """What a plan built by ``name`` here runs on: the current GPU, or the AOT compute-capability list."""
    if device is not None:
        return {"ahead_of_time": False, "device": device.name, "compute_capabilities": [device.compute_capability],
                "key": device.key}
    if name == "tensorrt_rtx":
        ccs = [cc_text(v) for v in rtx_compute_capabilities(trt)]
        return {"ahead_of_time": True, "compute_capabilities": ccs,
                "key": "aot-" + "-".join("sm" + c.replace(".", "") for c in ccs),
                "note": "ahead-of-time build, no GPU present: runs on an RTX-class GPU of these compute "
                        "capabilities"}
    raise EngineBuildError(
        "TensorRT (tensorrt) builds for the GPU it runs on and no CUDA GPU is visible here; build on the target "
        "GPU, or use --builder tensorrt-rtx (it builds ahead of time without a GPU, for RTX-class GPUs)"
    )


@dataclass(frozen=True)
class Builder:
    """The TensorRT that builds, and for what: the module, its name and version, the GPU and the target."""

    trt: ModuleType
    name: str  # "tensorrt" | "tensorrt_rtx"
    device: DeviceInfo | None
    target: dict[str, Any]

    @property
    def version(self) -> str:
        return self.trt.__version__


def resolve_builder(builder: str = "auto") -> Builder:
    """The builder for ``builder`` (``auto``: ``tensorrt`` if installed, else TensorRT-RTX) on this machine.

    Cheap, so callers run it before minutes of export work: a missing builder, or TensorRT without a GPU,
    fails here."""
    name = normalise_flavour(builder)
    if name not in BUILDERS:
        raise EngineBuildError(f"unknown TensorRT flavour {builder!r}: use --builder auto, tensorrt or tensorrt-rtx")
    trt, name = import_tensorrt(name, purpose="to build engines")
    device = detect_device()
    return Builder(trt, name, device, build_target(name, trt, device))


def _progress_monitor(trt: ModuleType, report: Callable[[str], None] | None, stop: threading.Event) -> Any:
    """An ``IProgressMonitor`` that reports "phase (step/steps)" lines (when ``report`` is given) and cancels the
    build once ``stop`` is set; None where the module has none."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            self._say(phase_name)

        def step_complete(self, phase_name: str, step: int) -> bool:
            self._say(f"{phase_name} ({step + 1}/{self.steps.get(phase_name, '?')})")
            return not stop.is_set()  # False cancels the build

        def phase_finish(self, phase_name: str) -> None:
            self.steps.pop(phase_name, None)

        def _say(self, text: str) -> None:
            if report is None:
                return
            try:
                report(text)
            except Exception:  # a display problem must not abort a build running in TensorRT's thread
                pass

    return Monitor()


@contextlib.contextmanager
def _signals_held() -> Iterator[threading.Event]:
    """Hold SIGINT and SIGTERM back while TensorRT runs, and hand them on once it has returned.

    A Python signal handler runs in the next Python code of the main thread: during a build, TensorRT's logger
    or progress-monitor callback, and TensorRT swallows what it raises there (``Exception caught in log():
    KeyboardInterrupt``) and builds on. So within the block a signal that Python handles only sets the event
    (the progress monitor then cancels the build), and the block ends by calling the displaced handler with
    that signal: the CLI's (and Python's default Ctrl-C) raises ``KeyboardInterrupt`` before the plan is
    returned, so nothing gets written. A second signal takes the default action at once (the process ends),
    for a build that does not stop when asked. Outside the main thread (no handlers can be set) nothing
    changes.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    displaced = {s: h for s in (signal.SIGINT, signal.SIGTERM) if callable(h := signal.getsignal(s))}
    held: list[int] = []

    def hold(signum: int, _frame: object) -> None:
        held.append(signum)
        stop.set()
        for s in displaced:
            signal.signal(s, signal.SIG_DFL)

    for s in displaced:
        signal.signal(s, hold)
    try:
        yield stop
    finally:
        for s, h in displaced.items():
            signal.signal(s, h)
        if held:
            displaced[held[0]](held[0], None)  # raises KeyboardInterrupt (over a "build cancelled" error)


@contextlib.contextmanager
def _quiet_once_stopped(stop: threading.Event) -> Iterator[None]:
    """Keep TensorRT's log out of ``logging`` once a stop is requested: the one line the user asked for is
    "stopped by SIGINT", not the builder's ``BuildCanceled`` error (the build's capture still keeps it)."""

    def keep(_record: logging.LogRecord) -> bool:
        return not stop.is_set()

    LOG.addFilter(keep)
    try:
        yield
    finally:
        LOG.removeFilter(keep)


def _apply_timing_cache(trt: ModuleType, name: str, config: Any, blob: bytes | None) -> str:
    """Attach a timing cache (``blob``: serialized, or None for a new one); returns what happened."""
    if name == "tensorrt_rtx":
        return ("not used: TensorRT-RTX ignores timing caches (no-ops since 1.2; it tunes on the target GPU)")
    cache = config.create_timing_cache(blob or b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return "loaded" if blob else "new"


def _parser_errors(parser: Any) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = ""
        node_name = getattr(err, "node_name", None)
        if callable(node_name) and node_name():
            where = f" at node {node_name()} ({err.node_operator()})"
        out.append(f"{err.desc() if callable(getattr(err, 'desc', None)) else err}{where}")
    return out


def build_engine(
    onnx_path: str | os.PathLike,
    *,
    builder: str | Builder = "auto",
    batch: tuple[int, int, int] | None = None,
    optimization_level: int | None = None,
    workspace_bytes: int | None = None,
    timing_cache: bytes | None = None,
    use_timing_cache: bool = False,
    progress: Callable[[str], None] | None = None,
    device: DeviceInfo | None = None,
) -> EngineBuild:
    """Parse ``onnx_path`` and build a serialized engine.

    Args:
        builder: ``tensorrt``, ``tensorrt_rtx`` (``tensorrt-rtx``) or ``auto`` (the first that imports), or a
            :func:`resolve_builder` result.
        batch: (min, opt, max) batch of the optimization profile; None means :data:`DEFAULT_BATCH_PROFILE`
            for a dynamic batch. A graph with a fixed batch gets no profile (and refuses ``batch``).
        optimization_level: builder optimization level 0..5 (None: TensorRT's default, 3); 0 builds fastest.
        workspace_bytes: workspace memory pool limit (None: TensorRT's default).
        timing_cache, use_timing_cache: with ``use_timing_cache``, start from the serialized cache ``timing_cache``
            (None: a new one) and return the updated cache in ``EngineBuild.timing_cache_blob`` (TensorRT only).
        progress: called with the builder's phase/step lines (``IProgressMonitor``) while it builds.
        device: the GPU building it (None: the builder's, :func:`detect_device`); without one only
            TensorRT-RTX builds, ahead of time for the compute capabilities of :func:`rtx_compute_capabilities`.

    TensorRT's messages go to the ``psvit.tensorrt`` logger; its warnings and errors of this build are kept
    in ``EngineBuild.warnings`` (and quoted when the build fails). A SIGINT or SIGTERM that Python handles
    cancels the build and is handed to its handler once TensorRT has returned (:func:`_signals_held`): with the
    CLI's, or Python's Ctrl-C, the build raises ``KeyboardInterrupt`` and returns no plan.
    """
    resolved = builder if isinstance(builder, Builder) else resolve_builder(builder)
    trt, name = resolved.trt, resolved.name
    device = device or resolved.device
    target = resolved.target if device is resolved.device else build_target(name, trt, device)
    path = Path(onnx_path)
    if not path.is_file():
        raise EngineBuildError(f"ONNX file {path} does not exist")
    with capture() as log, _signals_held() as stop, _quiet_once_stopped(stop):
        return _build(trt, name, path, device, target, log, stop, batch=batch, optimization_level=optimization_level,
                      workspace_bytes=workspace_bytes, timing_cache=timing_cache, use_timing_cache=use_timing_cache,
                      progress=progress)


def _build(trt: ModuleType, name: str, path: Path, device: DeviceInfo | None, target: dict[str, Any], log: Any,
           stop: threading.Event, *,
           batch: tuple[int, int, int] | None, optimization_level: int | None, workspace_bytes: int | None,
           timing_cache: bytes | None, use_timing_cache: bool, progress: Callable[[str], None] | None) -> EngineBuild:
    logger = trt_logger(trt, name)
    start = time.perf_counter()
    builder = trt.Builder(logger)
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if name == "tensorrt" and major < 11:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = _parser_errors(parser) or ["(no error reported)"]
        raise EngineBuildError(f"{name} {trt.__version__} cannot parse {path}:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    if optimization_level is not None:
        if not 0 <= optimization_level <= 5:
            raise EngineBuildError(f"builder optimization level must be 0..5, got {optimization_level}")
        config.builder_optimization_level = optimization_level
    if workspace_bytes is not None:
        if workspace_bytes <= 0:
            raise EngineBuildError(f"the workspace limit must be positive, got {workspace_bytes} bytes")
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names and types for the inspector
    if name == "tensorrt_rtx" and device is None:
        ccs = rtx_compute_capabilities(trt)
        config.num_compute_capabilities = len(ccs)
        for i, cc in enumerate(ccs):
            config.set_compute_capability(cc, i)
    cache_note = "not used"
    if use_timing_cache:
        cache_note = _apply_timing_cache(trt, name, config, timing_cache)
    monitor = _progress_monitor(trt, progress, stop)  # also how a signal cancels the build
    if monitor is not None:
        config.progress_monitor = monitor

    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    profile_shapes: dict[str, list[list[int]]] | None = None
    if dynamic:
        lo, opt, hi = batch or DEFAULT_BATCH_PROFILE
        if not 1 <= lo <= opt <= hi:
            raise EngineBuildError(f"batch profile must satisfy 1 <= min <= opt <= max, got {(lo, opt, hi)}")
        profile = builder.create_optimization_profile()
        profile_shapes = {}
        for t in dynamic:
            rest = list(t.shape)[1:]
            if any(d < 0 for d in rest):
                raise EngineBuildError(
                    f"input {t.name} has dynamic dims besides the batch ({list(t.shape)}); export with static "
                    f"token counts (psvit-export onnx does)"
                )
            shapes = [[b, *rest] for b in (lo, opt, hi)]
            profile.set_shape(t.name, *shapes)
            profile_shapes[t.name] = shapes
        config.add_optimization_profile(profile)
    elif batch is not None:
        raise EngineBuildError(
            f"{path.name} has a fixed batch {list(inputs[0].shape)[0]}; drop the batch profile or export with "
            f"--batch dynamic"
        )
    if stop.is_set():  # a signal arrived while parsing: do not start the build
        raise EngineBuildError(f"{name} build of {path.name} cancelled before it started")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{name} {trt.__version__} parsed {path.name} but could not build an engine:\n  "
                               f"{log.tail()}")
    cache_blob = None
    if use_timing_cache and name != "tensorrt_rtx":
        cache_blob = bytes(config.get_timing_cache().serialize())
    return EngineBuild(
        plan=bytes(plan), flavour=name, version=trt.__version__, seconds=time.perf_counter() - start,
        onnx_path=str(path), profile=profile_shapes, optimization_level=optimization_level,
        warnings=log.messages, workspace_bytes=workspace_bytes, device=device, target=target,
        timing_cache=cache_note, batch=(lo, opt, hi) if dynamic else None, timing_cache_blob=cache_blob,
    )
