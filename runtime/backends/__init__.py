"""Backends: one interface (:class:`Backend`) over PyTorch, ONNX Runtime and TensorRT (the TensorRT one
lives with the rest of the TensorRT core in ``psvit.runtime.tensorrt``); each imports its framework only when
it is constructed."""
from __future__ import annotations

from .base import Backend

BACKENDS = ("torch", "onnxruntime", "tensorrt")

__all__ = ["Backend", "BACKENDS"]
