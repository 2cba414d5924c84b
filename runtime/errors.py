"""Errors of the runtime; all are :class:`psvit.errors.PSViTError`, so the CLI prints them without a traceback."""
from __future__ import annotations

from ..errors import ArtifactError, PSViTError

__all__ = ["ArtifactError", "EngineMismatchError", "RuntimeInputError", "BackendError", "QueueFullError",
           "BatcherClosedError"]


class RuntimeInputError(PSViTError, ValueError):
    """An input batch of the wrong rank, dtype, channel count or image size; the message states what fits."""


class EngineMismatchError(ArtifactError):
    """An engine whose sidecar is missing or corrupt, or that was built for another TensorRT, GPU or ONNX."""


class BackendError(PSViTError):
    """A backend that cannot serve the request as asked (unknown name, wrong device, unsupported option)."""


class QueueFullError(PSViTError):
    """The micro-batcher's queue is full: slow down, add capacity, or raise ``max_queue``."""


class BatcherClosedError(PSViTError):
    """A request submitted to a micro-batcher after :meth:`Batcher.close` (or after its worker stopped)."""


class BatcherTargetError(PSViTError):
    """The micro-batcher's target returned something other than one output row per input row."""


class OutputError(PSViTError):
    """A prediction output that exists (and neither resume nor force was asked), or cannot be resumed."""
