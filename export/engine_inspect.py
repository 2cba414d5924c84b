"""Per-layer precisions of a built engine, from the engine inspector's JSON, checked against the request.

The inspector (``engine.create_engine_inspector().get_engine_information(LayerInformationFormat.JSON)``)
lists each layer with its input/output tensors only when the engine was built with
``ProfilingVerbosity.DETAILED`` (otherwise ``Layers`` is a list of names). Each tensor carries a
``Format/Datatype`` string such as ``"Row major linear FP16 format"`` or ``"Channel major FP32"`` (older
releases: ``"Half"``, ``"Float"``, ``"Int8"``). A requested precision that no layer runs in is a failure:
an "FP16" engine with no FP16 layer is the TensorRT 11 migration bug of other tools (rf-detr #1453).
Deserializing a plan needs a GPU, so :func:`engine_information` runs only where the engine can run.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .errors import EngineBuildError

_DTYPES = (  # pattern -> precision; order matters ("BF16" before "FP16")
    (re.compile(r"\bBF16\b|\bBFloat16\b", re.I), "bf16"),
    (re.compile(r"\bFP16\b|\bHalf\b", re.I), "fp16"),
    (re.compile(r"\bFP32\b|\bFloat\b|\bTF32\b", re.I), "fp32"),
    (re.compile(r"\bINT8\b", re.I), "int8"),
    (re.compile(r"\bFP8\b|\bE4M3\b", re.I), "fp8"),
    (re.compile(r"\bINT32\b|\bINT64\b|\bBool\b|\bUINT8\b", re.I), "int"),
)
COPY_LAYERS = ("Reformat", "NoOp", "Shuffle", "Constant")  # move data; their types say nothing about compute


def tensor_precision(desc: str) -> str | None:
    """``"Row major linear FP16 format"`` -> ``"fp16"``; None where the string names no type we know."""
    for pattern, name in _DTYPES:
        if pattern.search(desc):
            return name
    return None


@dataclass
class LayerPrecisions:
    """How many compute layers touch each precision (a layer with FP16 in and FP32 out counts for both)."""

    layers: int
    counts: dict[str, int]
    unknown: list[str] = field(default_factory=list)  # layers whose tensors name no known type

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "counts": self.counts, "unknown": len(self.unknown)}


def parse_engine_information(info: str | dict[str, Any]) -> LayerPrecisions:
    """Count the precisions of the compute layers in inspector JSON (a string or the parsed dict)."""
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise EngineBuildError("the engine inspector's JSON has no 'Layers' list; is it TensorRT inspector output?")
    if layers and not isinstance(layers[0], dict):
        raise EngineBuildError(
            "the engine inspector reports layer names only: the engine was not built with "
            "ProfilingVerbosity.DETAILED, so its layer precisions cannot be checked; rebuild it with psvit-export trt"
        )
    counts: Counter[str] = Counter()
    unknown: list[str] = []
    compute = 0
    for layer in layers:
        kind = str(layer.get("LayerType", ""))
        if any(kind.startswith(c) for c in COPY_LAYERS):
            continue
        compute += 1
        seen = set()
        for tensor in [*layer.get("Inputs", []), *layer.get("Outputs", [])]:
            desc = str(tensor.get("Format/Datatype") or tensor.get("Datatype") or tensor.get("Format") or "")
            prec = tensor_precision(desc)
            if prec is not None:
                seen.add(prec)
        if not seen:
            unknown.append(str(layer.get("Name", "?")))
        counts.update(seen)
    return LayerPrecisions(layers=compute, counts=dict(counts), unknown=unknown)


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


def engine_information(trt: ModuleType, plan: bytes, logger: Any) -> str:
    """Deserialize ``plan`` and return the inspector's JSON (needs a GPU that can run the engine)."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError("the engine cannot be deserialized here (no GPU that runs it?); "
                               "its layer precisions were not checked")
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)
