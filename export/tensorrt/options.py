"""Parsing and checking ``psvit-export trt`` options: batch profiles, workspace sizes, ONNX precision."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...runtime.onnx_graph import graph_precision
from ..errors import EngineBuildError

PRECISIONS = ("fp32", "fp16", "int8")
# The largest batch a profile may ask for: the runtime allocates device and pinned host buffers for the
# profile's MAX batch (TensorRT-RTX 1.7 only warned at 1:8:99999999999 and wrote an engine).
MAX_PROFILE_BATCH = 4096
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.I)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_batch_profile(text: str | None) -> tuple[int, int, int] | None:
    """``"1:8:32"`` -> (1, 8, 32); ``"4"`` -> (4, 4, 4) (a one-point profile); None -> None (default)."""
    if text is None or not str(text).strip():
        return None
    parts = str(text).strip().split(":")
    hint = "use --batch MIN:OPT:MAX (e.g. 1:8:32) or one fixed batch N"
    if len(parts) not in (1, 3):
        raise EngineBuildError(f"--batch {text!r} has {len(parts)} fields; {hint}")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise EngineBuildError(f"--batch {text!r} is not a whole number or MIN:OPT:MAX; {hint}") from None
    if any(v < 1 for v in values):
        raise EngineBuildError(f"--batch {text!r}: batch sizes must be positive; {hint}")
    lo, opt, hi = values * 3 if len(values) == 1 else values
    if not lo <= opt <= hi:
        raise EngineBuildError(f"--batch {text!r}: need MIN <= OPT <= MAX, got {lo}:{opt}:{hi}")
    if hi > MAX_PROFILE_BATCH:
        raise EngineBuildError(f"--batch {text!r}: MAX {hi} is above the limit of {MAX_PROFILE_BATCH} (the runtime "
                               f"allocates buffers for the MAX batch); use e.g. 1:8:{min(hi, 256)}, and split larger "
                               f"batches (psvit.runtime chunks them)")
    return lo, opt, hi



def parse_size(text: str | int | None) -> int | None:
    """``"512M"`` -> 536870912, ``"2G"``, ``"1.5GiB"``, ``"4096"`` (bytes); binary units. None -> None."""
    if text is None:
        return None
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise EngineBuildError(f"--workspace {text!r} is not a size; use e.g. 512M, 2G or a number of bytes")
        value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise EngineBuildError(f"--workspace {text!r} must be larger than zero")
    return value


@dataclass
class OnnxFacts:
    """What an ONNX file says about itself: precision (graph and metadata), input shape, metadata."""

    path: Path
    precision: str  # from the graph: "int8" (Q/DQ), "fp16" (FP16-typed), "fp32"
    metadata_precision: str | None  # psvit.precision, if any
    input_name: str
    input_shape: list[int | str]  # (N, C, H, W); a symbolic dim is its name
    metadata: dict[str, Any]

    @property
    def static_batch(self) -> int | None:
        b = self.input_shape[0]
        return b if isinstance(b, int) and b > 0 else None


def inspect_onnx_file(path: str | os.PathLike) -> OnnxFacts:
    """Read the graph (not the weights) of ``path`` and decide its precision; refuse non-ONNX files."""
    from ..metadata import read_metadata
    from ..onnx_io import load_onnx_graph

    path = Path(path)
    model = load_onnx_graph(path, "pass a .onnx file (psvit-export trt and psvit.pipeline.engine also take a "
                                  "checkpoint or 'demo')")
    graph = model.graph
    if not graph.node or not graph.input:
        raise EngineBuildError(f"{path} is not an ONNX model with a graph (no nodes or inputs)")
    meta = read_metadata(model)
    precision = graph_precision(model)
    declared = meta.get("psvit.precision")
    declared = str(declared).lower() if declared else None
    if declared in PRECISIONS and declared != precision:
        raise EngineBuildError(
            f"{path.name} says psvit.precision={declared} but its graph is {precision.upper()} "
            f"({'Q/DQ nodes' if precision == 'int8' else 'FP16-typed tensors' if precision == 'fp16' else 'FP32 only'})"
            f"; re-export it with psvit-export onnx/calibrate"
        )
    inp = graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in inp.type.tensor_type.shape.dim]
    return OnnxFacts(path=path, precision=precision, metadata_precision=declared, input_name=inp.name,
                     input_shape=dims, metadata=meta)


def resolve_precision(facts: OnnxFacts, *, fp16: bool, int8: bool) -> tuple[str, str | None]:
    """(precision to build, conversion needed: None | "fp16" | "int8"); conflicting flags raise."""
    if fp16 and int8:
        raise EngineBuildError("--fp16 and --int8 exclude each other; choose one")
    wanted = "fp16" if fp16 else "int8" if int8 else None
    have = facts.precision
    if wanted is None or wanted == have:
        return have, None
    if have != "fp32":
        raise EngineBuildError(
            f"{facts.path.name} is already a {have.upper()} graph; it cannot be built as {wanted.upper()}. Drop "
            f"--{wanted} to build it as it is, or start from the FP32 ONNX or the checkpoint"
        )
    return wanted, wanted
