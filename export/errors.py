"""Errors of the export toolchain: all are :class:`psvit.errors.PSViTError`, so the CLI prints them
without a traceback and exits non-zero. Unreadable inputs are :class:`psvit.errors.ArtifactError` and
unwritable outputs :class:`psvit.errors.OutputPathError`, as in every stage."""
from __future__ import annotations

from ..errors import PSViTError


class ExportError(PSViTError):
    """An export that cannot be done as asked (bad option, unsupported opset)."""


class GraphCheckError(ExportError):
    """An exported graph that breaks a structural promise (shape ops, symbolic dims, duplicated maps)."""


class VerificationError(ExportError):
    """An artifact whose outputs differ from its parent's by more than the tolerance."""


class EngineBuildError(ExportError):
    """TensorRT (or TensorRT-RTX) could not parse the ONNX graph or build an engine from it, or a build
    option is invalid."""
