"""Errors of the export toolchain: all are :class:`psvit.errors.PSViTError`, so the CLI prints them
without a traceback and exits non-zero."""
from __future__ import annotations

from ..errors import PSViTError


class ExportError(PSViTError):
    """An export that cannot be done as asked (bad option, unsupported opset, unwritable output)."""


class GraphCheckError(ExportError):
    """An exported graph that breaks a structural promise (shape ops, symbolic dims, duplicated maps)."""


class VerificationError(ExportError):
    """An artifact whose outputs differ from its parent's by more than the tolerance."""


class EngineBuildError(ExportError):
    """TensorRT (or TensorRT-RTX) could not parse the ONNX graph or build an engine from it."""


class EngineMismatchError(PSViTError):
    """An engine whose sidecar is missing or corrupt, or that was built for another TensorRT, GPU or ONNX."""
