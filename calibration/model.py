"""The FP32 input of calibration: an exported PSViT ONNX file, checked. A checkpoint is exported first by
the pipeline (:mod:`psvit.pipeline`; ``psvit-export calibrate`` does it), never here."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import ArtifactKind, detect_artifact
from .errors import CalibrationError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv", "MatMulInteger", "ConvInteger")
_EXPORT_HINT = "export it with: psvit-export onnx SOURCE --out model.onnx"


@dataclass(frozen=True)
class Fp32Model:
    """A checked FP32 PSViT graph and what calibration needs from its metadata."""

    path: Path
    metadata: dict[str, Any]
    preprocess: dict[str, Any]
    input_name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    static_batch: int | None


def load_fp32_model(path: str | os.PathLike) -> Fp32Model:
    """Read and check an FP32 ONNX file written by ``psvit-export onnx``; a Q/DQ or FP16 graph is refused."""
    from ..export import read_metadata
    from ..export.onnx_io import load_onnx_graph

    path = Path(path)
    artifact = detect_artifact(path)
    if artifact.kind is not ArtifactKind.ONNX:
        raise CalibrationError(
            f"{path} is a {artifact.kind.value} ({artifact.format}), not an ONNX graph; quantize_onnx takes the FP32 "
            f"export ({_EXPORT_HINT}); `psvit-export calibrate` and psvit.pipeline export checkpoints first"
        )
    proto = load_onnx_graph(path, f"pass an FP32 .onnx file ({_EXPORT_HINT})")
    meta = read_metadata(proto)
    quantized = sorted({n.op_type for n in proto.graph.node if n.op_type in QDQ_OPS})
    if quantized or meta.get("psvit.precision") == "int8":
        raise CalibrationError(
            f"{path} is already quantized ({', '.join(quantized) or 'psvit.precision=int8'}); calibrate the FP32 "
            f"export instead ({_EXPORT_HINT})"
        )
    if "psvit.preprocess" not in meta or "psvit.config" not in meta:
        raise CalibrationError(
            f"{path} has no psvit metadata (psvit.preprocess / psvit.config), so its preprocessing is unknown; "
            f"{_EXPORT_HINT}"
        )
    if meta.get("psvit.precision", "fp32") != "fp32":
        raise CalibrationError(
            f"{path} is a {meta['psvit.precision']} graph; calibrate the FP32 export (psvit-export onnx without "
            f"--fp16): the INT8 graph gets its FP16 parts after quantization"
        )
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1:
        raise CalibrationError(f"{path}: expected one image input (N, C, H, W), got {len(inputs)} inputs; "
                               f"{_EXPORT_HINT}")
    (inp,) = inputs
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or None in dims[1:]:
        raise CalibrationError(f"{path}: expected one image input (N, C, H, W) with a fixed size, got {dims}; "
                               f"{_EXPORT_HINT}")
    return Fp32Model(
        path=path, metadata=meta, preprocess=dict(meta["psvit.preprocess"]), input_name=inp.name,
        input_shape=(int(dims[1]), int(dims[2]), int(dims[3])), static_batch=dims[0],
    )


def quantization_graph(path: str | os.PathLike) -> Any:
    """The graph quantization and its sensitivity analysis work on: the FP32 export with each block's Q, K
    and V projections merged into one GEMM (:mod:`.merge_gemms`) and every node named (the recipe and
    ``--exclude`` refer to nodes by name)."""
    import onnx

    from ..export.onnx_io import name_nodes
    from .merge_gemms import merge_sibling_gemms

    proto = onnx.load(str(path))
    merge_sibling_gemms(proto)
    name_nodes(proto)
    return proto
