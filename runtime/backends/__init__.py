"""Backends: one interface (:class:`Backend`) over PyTorch, ONNX Runtime and TensorRT; each imports its
framework only when it is constructed."""
from __future__ import annotations

from .base import Backend

BACKENDS = ("torch", "onnxruntime", "tensorrt")

__all__ = ["Backend", "BACKENDS"]
