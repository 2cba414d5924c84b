"""Loading a TensorRT / TensorRT-RTX plan: the one place that deserialises engines (the runtime's backend,
the builder's post-build checks and the engine inspector all load through :func:`load_engine`).

With a sidecar (``FILE.json``) the plan is checked against it first (sha256, TensorRT flavour and version,
GPU); without one (trtexec, Triton model repositories) the I/O tensors, precision and batch profile are
read from the engine itself and a warning says that its provenance is unknown. The engine is deserialised
under the device it will run on (``cuda:N``), so its memory and later its execution contexts live there.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ...artifacts import PLAN_MAGICS, RTX_PLAN_MAGIC, sidecar_path
from ...errors import ArtifactError, require
from ..errors import BackendError
from .device import DeviceInfo, no_gpu_reason, resolve_device
from .layers import layer_precisions
from .library import import_tensorrt
from .logger import capture, trt_logger
from .sidecar import EngineSidecar, check_sidecar, read_sidecar

_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
           "INT32": "int32", "INT64": "int64", "BOOL": "bool", "FP8": "float8_e4m3fn"}


class ProvenanceWarning(UserWarning):
    """An engine loaded without a sidecar: nothing says what it was built from or for."""


@dataclass(frozen=True)
class TensorInfo:
    """One I/O tensor of an engine; ``-1`` marks a dimension set at run time."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy name: "float32", "float16", ...


@dataclass
class LoadedEngine:
    """A deserialised engine on one GPU and what is known about it."""

    trt: ModuleType
    flavour: str
    runtime: Any  # trt.Runtime (kept alive as long as the engine)
    engine: Any  # trt.ICudaEngine
    device: DeviceInfo
    label: str
    sidecar: EngineSidecar | None
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    profile: dict[str, list[list[int]]] | None  # input -> [min, opt, max] shapes of profile 0; None if static
    precision: str
    warnings: list[str] = field(default_factory=list)

    @property
    def batch_range(self) -> tuple[int, int] | None:
        """(min, max) batch of the first input's profile; None for a static engine."""
        if self.profile is None:
            return None
        lo, _opt, hi = self.profile[self.inputs[0].name]
        return lo[0], hi[0]

    def layer_information(self) -> str:
        """The engine inspector's JSON (per-layer tensors and types for DETAILED builds)."""
        inspector = self.engine.create_engine_inspector()
        return inspector.get_engine_information(self.trt.LayerInformationFormat.JSON)


def _read_plan(source: str | os.PathLike | bytes) -> tuple[bytes, Path | None, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None, "the engine plan"
    path = Path(source)
    if not path.is_file():
        raise ArtifactError(f"engine file {path} does not exist; check the path, or build one with "
                            f"`psvit-export trt`")
    return path.read_bytes(), path, path.name


def _io_tensors(trt: ModuleType, engine: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = engine.get_tensor_dtype(name)
        info = TensorInfo(name, tuple(int(d) for d in engine.get_tensor_shape(name)),
                          _DTYPES.get(getattr(dtype, "name", str(dtype)), str(dtype)))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(info)
    return inputs, outputs


def _profile(engine: Any, inputs: list[TensorInfo]) -> dict[str, list[list[int]]] | None:
    dynamic = [t for t in inputs if any(d < 0 for d in t.shape)]
    if not dynamic:
        return None
    return {t.name: [[int(d) for d in s] for s in engine.get_tensor_profile_shape(t.name, 0)] for t in dynamic}


def load_engine(
    source: str | os.PathLike | bytes,
    *,
    device: str | None = None,
    sidecar: EngineSidecar | None = None,
) -> LoadedEngine:
    """Deserialise ``source`` (an engine file, or plan bytes with an optional ``sidecar``) on ``device``.

    Raises :class:`ArtifactError` (missing, corrupt, no sidecar and no plan header), ``EngineMismatchError``
    (a sidecar that does not fit this plan, TensorRT or GPU), :class:`BackendError` (no GPU) and
    ``MissingDependencyError`` (TensorRT or torch not installed).
    """
    plan, path, label = _read_plan(source)
    notes: list[str] = []
    if sidecar is None and path is not None and sidecar_path(path).is_file():
        sidecar = read_sidecar(path, plan=plan)  # EngineMismatchError when corrupt or not this plan's
    if sidecar is None:
        if plan[:4] not in PLAN_MAGICS:
            raise ArtifactError(
                f"{label} has no sidecar {sidecar_path(path).name if path else '(.engine.json)'} and its content "
                f"is not a TensorRT plan (header {plan[:4]!r}); pass an engine built with `psvit-export trt` or "
                f"trtexec"
            )
        notes.append(f"{label} has no sidecar: its provenance (ONNX, calibration, build options) is unknown; "
                     f"I/O, precision and profile were read from the engine")
        flavour_wanted = "tensorrt_rtx" if plan[:4] == RTX_PLAN_MAGIC else "tensorrt"
    else:
        flavour_wanted = sidecar.flavour
    trt, flavour = import_tensorrt(flavour_wanted, purpose=f"to run {label}")
    gpu = resolve_device(device)
    if gpu is None:
        raise BackendError(f"{label} is a TensorRT engine: it runs on an NVIDIA GPU, and none is visible "
                           f"({no_gpu_reason()})")
    if sidecar is not None:
        check_sidecar(sidecar, flavour=flavour, version=trt.__version__, device_name=gpu.name,
                      compute_capability=gpu.compute_capability)
    torch = require("torch", "torch", "running TensorRT engines (PyTorch holds the GPU buffers)")
    with capture() as log, torch.cuda.device(gpu.index):  # the engine's memory lives on its own GPU
        runtime = trt.Runtime(trt_logger(trt, flavour))
        engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise ArtifactError(f"{flavour} {trt.__version__} cannot deserialize {label} on {gpu.name}: the plan is "
                            f"truncated, corrupt or built for another TensorRT; rebuild it with `psvit-export "
                            f"trt`. TensorRT said:\n  {log.tail()}")
    inputs, outputs = _io_tensors(trt, engine)
    if sidecar is not None:
        precision = sidecar.precision
    else:
        try:
            precision = layer_precisions(engine.create_engine_inspector().get_engine_information(
                trt.LayerInformationFormat.JSON)).precision
        except ArtifactError as exc:
            precision = "unknown"
            notes.append(f"precision unknown: {exc}")
    loaded = LoadedEngine(trt=trt, flavour=flavour, runtime=runtime, engine=engine, device=gpu, label=label,
                          sidecar=sidecar, inputs=inputs, outputs=outputs, profile=_profile(engine, inputs),
                          precision=precision, warnings=notes + log.messages)
    for note in notes:
        warnings.warn(note, ProvenanceWarning, stacklevel=2)
    return loaded
