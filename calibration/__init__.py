"""INT8 calibration: explicit Q/DQ ONNX from real images, with a calibration cache and an accuracy report.

Entry point for other stages: :func:`quantize_onnx` (FP32 PSViT ONNX -> Q/DQ INT8 ONNX).
"""
from __future__ import annotations

from .cache import default_cache_path
from .data import CalibrationSet, load_calibration_set
from .errors import CacheMismatchError, CalibrationError
from .methods import METHODS
from .progress import CalibrationProgress
from .quantize import QuantizeResult, quantize_onnx
from .recipe import Recipe, classify, plan_recipe

__all__ = [
    "quantize_onnx", "QuantizeResult", "load_calibration_set", "CalibrationSet", "plan_recipe", "classify",
    "Recipe", "METHODS", "default_cache_path", "CalibrationError", "CacheMismatchError", "CalibrationProgress",
]
