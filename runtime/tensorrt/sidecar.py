"""The engine sidecar ``FILE.json``: how a raw TensorRT plan ``FILE`` was built, and the checks that use it.

The plan stays raw (raw TensorRT, trtexec and Triton load it); provenance lives here. Written atomically
and before the plan is renamed into place, with the plan's sha256: an interrupted write leaves at worst a
sidecar that does not match its plan, which :func:`read_sidecar` reports — never a plan without a sidecar.
Reading it needs only the standard library: a service that runs engines reads their facts without onnx,
onnxscript or torch installed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ...artifacts import sidecar_path
from ...provenance import sha256_file, write_json
from ..errors import EngineMismatchError
from .library import normalise_flavour

__all__ = ["EngineSidecar", "read_sidecar", "check_sidecar", "write_sidecar", "sidecar_path", "normalise_flavour",
           "FORMAT"]

FORMAT = "psvit-engine/1"
GENERIC_REBUILD = "psvit-export trt SOURCE --out ENGINE [--fp16|--int8 --calib-data DIR] --force"


@dataclass
class EngineSidecar:
    """Everything recorded about one engine (see the module docstring)."""

    engine_file: str  # name of the plan next to the sidecar
    engine_sha256: str
    engine_bytes: int
    flavour: str  # "tensorrt" | "tensorrt_rtx"
    version: str  # of the builder
    device_name: str | None  # the GPU it was built on; None for an ahead-of-time build
    compute_capability: str | None  # of that GPU ("8.6")
    target: dict[str, Any]  # {"ahead_of_time", "compute_capabilities", "key", "note"}
    precision: str  # "fp32" | "fp16" | "int8"
    batch: list[int] | None  # [min, opt, max] of the profile; None for a static graph
    profile: dict[str, list[list[int]]] | None  # input -> [min, opt, max] shapes
    static_shapes: dict[str, list[int]] | None  # input -> shape, for a static graph
    onnx_path: str
    onnx_sha256: str
    calibration: dict[str, Any] | None  # {"cache_sha256", "method", "cache"} for INT8
    model_config: dict[str, Any] | None
    variant: str | None
    class_names: list[str] | None
    preprocess: dict[str, Any] | None
    source: dict[str, Any]  # {"description", "sha256"} of what the ONNX came from
    build_options: dict[str, Any]  # optimization_level, workspace_bytes, timing_cache
    build_seconds: float
    built_at: str  # UTC, ISO 8601
    versions: dict[str, str]  # packages (python, psvit-deploy, onnx, ...)
    psvit_deploy_version: str | None
    command: str  # the psvit-export trt command that rebuilds it
    precision_check: dict[str, Any] = field(default_factory=dict)  # inspector result, or why it did not run
    warnings: list[str] = field(default_factory=list)
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineSidecar":
        names = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.name not in data
                    and f.default is MISSING and f.default_factory is MISSING]
        if required:
            raise ValueError(f"missing fields: {', '.join(required)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def build_key(self) -> dict[str, Any]:
        """What decides whether this engine can be reused for a new request."""
        return {
            "onnx_sha256": self.onnx_sha256, "precision": self.precision, "batch": self.batch,
            "flavour": self.flavour, "version": self.version, "target": self.target.get("key"),
            "optimization_level": self.build_options.get("optimization_level"),
            "workspace_bytes": self.build_options.get("workspace_bytes"),
        }


def _rebuild_hint(command: str | None) -> str:
    return f"rebuild it with: {command or GENERIC_REBUILD}"


def write_sidecar(sidecar: EngineSidecar, engine_path: str | os.PathLike) -> Path:
    """Write ``FILE.json`` for the engine ``FILE`` atomically."""
    path = sidecar_path(engine_path)
    write_json(path, sidecar.to_dict())
    return path


def read_sidecar(engine_path: str | os.PathLike, *, verify_plan: bool = True,
                 plan: bytes | None = None) -> EngineSidecar:
    """Read and validate the sidecar of ``engine_path``.

    Raises :class:`EngineMismatchError` (saying how to rebuild) when the sidecar is missing or corrupt, or,
    with ``verify_plan``, when the plan is missing or is not the one the sidecar describes (its sha256).
    ``plan``: the plan's bytes when the caller has read them already; they are checked instead of the file
    (no second read, and the bytes checked are the bytes that get deserialised).
    """
    engine_path = Path(engine_path)
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise EngineMismatchError(
            f"engine {engine_path} has no sidecar {path.name}, so nothing says what it was built for; "
            f"{_rebuild_hint(None)}"
        )
    command: str | None = None
    try:
        data = json.loads(path.read_text())
        command = data.get("command") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format') if isinstance(data, dict) else type(data).__name__!r}, "
                             f"expected {FORMAT!r}")
        sidecar = EngineSidecar.from_dict(data)
    except (OSError, ValueError, TypeError) as exc:
        raise EngineMismatchError(f"the sidecar {path} of engine {engine_path.name} is corrupt ({exc}); "
                                  f"{_rebuild_hint(command)}") from exc
    if verify_plan:
        if plan is None and not engine_path.is_file():
            raise EngineMismatchError(f"engine {engine_path} does not exist (only its sidecar); "
                                      f"{_rebuild_hint(sidecar.command)}")
        size = len(plan) if plan is not None else engine_path.stat().st_size
        if size != sidecar.engine_bytes or _sha256(plan, engine_path) != sidecar.engine_sha256:
            raise EngineMismatchError(
                f"engine {engine_path} is not the plan its sidecar describes (sha256 differs: replaced or an "
                f"interrupted build); {_rebuild_hint(sidecar.command)}"
            )
    return sidecar


def _sha256(plan: bytes | None, path: Path) -> str:
    return hashlib.sha256(plan).hexdigest() if plan is not None else sha256_file(path)


def check_sidecar(
    sidecar: EngineSidecar,
    *,
    flavour: str,
    version: str,
    device_name: str | None,
    compute_capability: str | None,
    onnx_sha256: str | None = None,
) -> None:
    """Raise :class:`EngineMismatchError` naming every difference between the engine and this runtime.

    Args:
        flavour, version: the TensorRT module that will deserialize the plan (``tensorrt``/``tensorrt_rtx``).
        device_name, compute_capability: the GPU it will run on (None: unknown, not checked).
        onnx_sha256: the ONNX the caller expects the engine to be built from (None: not checked).
    """
    problems: list[str] = []
    if normalise_flavour(flavour) != normalise_flavour(sidecar.flavour):
        problems.append(f"it was built with {sidecar.flavour} {sidecar.version}, this runtime is "
                        f"{normalise_flavour(flavour)} {version}")
    elif version != sidecar.version:
        problems.append(f"it was built with {sidecar.flavour} {sidecar.version}, this runtime has {version} "
                        f"(plans only load in the TensorRT version that built them)")
    if sidecar.device_name is not None:
        if compute_capability is not None and compute_capability != sidecar.compute_capability:
            problems.append(f"it was built for GPU {sidecar.device_name} (compute capability "
                            f"{sidecar.compute_capability}), this GPU is {device_name or '?'} (compute capability "
                            f"{compute_capability})")
        elif device_name is not None and device_name != sidecar.device_name:
            problems.append(f"it was built on GPU {sidecar.device_name}, this GPU is {device_name} (same compute "
                            f"capability {sidecar.compute_capability}, but tactics were timed on the other GPU)")
    elif compute_capability is not None:
        targets = [str(c) for c in sidecar.target.get("compute_capabilities", [])]
        if targets and compute_capability not in targets:
            problems.append(f"it was built ahead of time for compute capabilities {', '.join(targets)}; this GPU "
                            f"{device_name or ''} has {compute_capability}".replace("  ", " "))
    if onnx_sha256 is not None and onnx_sha256 != sidecar.onnx_sha256:
        problems.append(f"its ONNX changed: built from {Path(sidecar.onnx_path).name} with sha256 "
                        f"{sidecar.onnx_sha256[:12]}…, expected {onnx_sha256[:12]}…")
    if problems:
        raise EngineMismatchError(
            f"engine {sidecar.engine_file} does not fit: " + "; ".join(problems) + f". {_rebuild_hint(sidecar.command)}"
        )
