"""The builder's check of a built engine's per-layer precisions against the requested precision.

The inspector JSON is read by the runtime's TensorRT core (:mod:`psvit.runtime.tensorrt.layers`); here a
requested precision that no layer runs in is a build failure: an "FP16" engine with no FP16 layer is the
TensorRT 11 migration bug of other tools (rf-detr #1453). Deserializing a plan needs a GPU, so the check
runs only where the engine can run (``psvit.export.tensorrt.engine_file``).
"""
from __future__ import annotations

from typing import Any

from ...errors import ArtifactError
from ...runtime.tensorrt.layers import LayerPrecisions, layer_precisions
from ..errors import EngineBuildError

__all__ = ["LayerPrecisions", "parse_engine_information", "check_layer_precisions"]


def parse_engine_information(info: str | dict[str, Any]) -> LayerPrecisions:
    """:func:`psvit.runtime.tensorrt.layer_precisions` for the builder: inspector output that cannot be
    checked (no per-layer types) fails the build's check (:class:`EngineBuildError`)."""
    try:
        return layer_precisions(info)
    except ArtifactError as exc:
        raise EngineBuildError(str(exc)) from None


def check_layer_precisions(info: str | dict[str, Any], precision: str) -> LayerPrecisions:
    """Raise :class:`EngineBuildError` unless the engine runs layers in ``precision`` (fp32, fp16 or int8).

    FP16 and INT8 engines need at least one compute layer in that precision; an FP32 engine must have no
    FP16/INT8 layer (a strongly-typed build never lowers precision on its own).
    """
    report = parse_engine_information(info)
    if report.layers == 0:
        raise EngineBuildError("the engine inspector lists no compute layers; the engine cannot be checked")
    c = report.counts
    if precision in ("fp16", "int8") and not c.get(precision):
        raise EngineBuildError(
            f"the engine was requested as {precision.upper()} but none of its {report.layers} compute layers runs "
            f"in {precision.upper()} (precisions seen: {_fmt(c)}). Check that the ONNX is "
            f"{'FP16-typed' if precision == 'fp16' else 'a Q/DQ graph'} and the builder is strongly typed"
        )
    if precision == "fp32" and (c.get("fp16") or c.get("int8")):
        raise EngineBuildError(
            f"the engine was requested as FP32 but some layers run in lower precision ({_fmt(c)}); "
            f"the ONNX is not a pure FP32 graph"
        )
    return report


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
