"""Per-layer precisions of an engine, from the engine inspector's JSON.

The inspector (``engine.create_engine_inspector().get_engine_information(LayerInformationFormat.JSON)``)
lists each layer with its input/output tensors only when the engine was built with
``ProfilingVerbosity.DETAILED`` (otherwise ``Layers`` is a list of names). Each tensor carries a
``Format/Datatype`` string such as ``"Row major linear FP16 format"`` or ``"Channel major FP32"`` (older
releases: ``"Half"``, ``"Float"``, ``"Int8"``). The runtime reads an engine's precision from here when no
sidecar records it; the builder checks the requested precision with it (``psvit.export.tensorrt.inspect``).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ...errors import ArtifactError

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

    @property
    def precision(self) -> str:
        """The engine's precision as the builder names it: ``int8`` if any layer runs INT8, else ``fp16`` if
        any runs FP16, else ``fp32`` (``unknown`` without compute layers)."""
        for name in ("int8", "fp8", "fp16", "bf16", "fp32"):
            if self.counts.get(name):
                return name
        return "unknown"


def layer_precisions(info: str | dict[str, Any]) -> LayerPrecisions:
    """Count the precisions of the compute layers in inspector JSON (a string or the parsed dict).

    Raises :class:`ArtifactError` when the JSON has no per-layer types (not inspector output, or an engine
    built without ``ProfilingVerbosity.DETAILED``)."""
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise ArtifactError("the engine inspector's JSON has no 'Layers' list; is it TensorRT inspector output?")
    if layers and not isinstance(layers[0], dict):
        raise ArtifactError(
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
