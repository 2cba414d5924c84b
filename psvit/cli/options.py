"""Options shared by several commands: one spelling, one help text, ``Enum`` choices (shown in ``--help``
and offered by shell completion). The Python API uses the same names (``calib_method``, ``builder``,
``optimization_level``, ...); the enum values are the library's own (checked in the tests)."""
from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..flags import TRT_FLAGS as F
from .console import warn


class BackendChoice(str, enum.Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


class BuilderChoice(str, enum.Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    tensorrt_rtx = "tensorrt-rtx"


class CalibMethod(str, enum.Enum):
    max = "max"
    percentile = "percentile"
    entropy = "entropy"
    mse = "mse"


class SharedAttention(str, enum.Enum):
    map = "map"
    qk = "qk"
    auto = "auto"


CalibDataOpt = Annotated[Optional[str], typer.Option(
    F["calib_data"], help="Calibration images: image folder (recursive), .npy/.npz of preprocessed images, or "
                         "'synthetic'.")]
CalibCountOpt = Annotated[Optional[int], typer.Option(
    F["calib_count"], help="Calibration images [default: 512, the ~500 NVIDIA advises]; fewer than a method needs "
                           "(max/entropy 256, percentile 64, mse 16) warns.")]
CalibBatchOpt = Annotated[Optional[int], typer.Option(
    F["calib_batch"], help="Images per calibration run [default: 16]; memory grows with it, the ranges do not.")]
CalibMethodOpt = Annotated[CalibMethod, typer.Option(F["calib_method"], help="Calibration method.")]
CalibCacheOpt = Annotated[Optional[Path], typer.Option(
    F["calib_cache"], help="Calibration cache file [default: next to the INT8 ONNX, *.calib.json].")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON to this file.")]
VariantOpt = Annotated[Optional[str], typer.Option(
    "--variant", help="Architecture of a .pth state dict without a config.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads (PyTorch / ONNX Runtime intra-op) [default: the framework's].")]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", help="cpu | cuda | cuda:N [default: the backend's].")]


def deprecated_alias(old: str, new: str, value: object, current: object) -> object:
    """The value of a renamed option: ``new``'s, or the hidden old spelling's (given: not None) with a warning."""
    if value is None:
        return current
    warn(f"{old} is deprecated; use {new}")
    return value
