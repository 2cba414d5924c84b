"""Export a PSViT to ONNX (FP32/FP16) with static token counts, verify it against PyTorch, inspect and
compare artifacts; build TensorRT/TensorRT-RTX engines from them (:mod:`psvit.export.tensorrt`).

Needs the ``onnx`` extra (``pip install 'psvit-deploy[onnx]'``); ONNX Runtime, the FP16 converter and
TensorRT are imported only where they are used. Artifacts run through :mod:`psvit.runtime` (verification
and ``compare`` too); this package sits above it and never the other way round.
"""
from __future__ import annotations

from ..errors import require

require("onnx", "'psvit-deploy[onnx]'", "psvit.export")
require("onnxscript", "'psvit-deploy[onnx]'", "psvit.export")

from .errors import EngineBuildError, ExportError, GraphCheckError, VerificationError  # noqa: E402
from .fp16 import Fp16Report, convert_fp16  # noqa: E402
from .graph_checks import GraphReport, check_graph  # noqa: E402
from .inputs import sample_inputs  # noqa: E402
from .inspect import OnnxSummary, inspect_onnx  # noqa: E402
from .metadata import read_metadata  # noqa: E402
from .onnx_export import ExportResult, export_onnx  # noqa: E402
from .save import needs_external_data  # noqa: E402
from .sharing import QK_MIN_TOKENS_GPU, SharingPlan, plan_shared_attention  # noqa: E402
from .sources import ModelSource, load_source  # noqa: E402
from .tensorrt import (  # noqa: E402
    EngineBuild, EngineResult, LayerPrecisions, build_engine, build_engine_file, check_layer_precisions,
    parse_engine_information,
)
from .trace import DEFAULT_OPSET, torch_to_onnx  # noqa: E402
from .verify import FP16_MAX_REL_L2, FP32_MAX_REL_L2, Comparison, OutputMetrics, compare  # noqa: E402

__all__ = [
    "export_onnx", "ExportResult", "torch_to_onnx", "DEFAULT_OPSET", "convert_fp16", "Fp16Report",
    "check_graph", "GraphReport", "compare", "Comparison", "OutputMetrics", "FP32_MAX_REL_L2",
    "FP16_MAX_REL_L2", "inspect_onnx", "OnnxSummary", "read_metadata", "build_engine", "EngineBuild",
    "load_source", "ModelSource", "sample_inputs", "plan_shared_attention", "SharingPlan", "QK_MIN_TOKENS_GPU",
    "needs_external_data", "ExportError", "GraphCheckError", "VerificationError", "EngineBuildError",
    "build_engine_file", "EngineResult", "check_layer_precisions", "parse_engine_information", "LayerPrecisions",
]
