"""``load`` and ``from_model``: pick the backend for an artifact and build a :class:`Runtime` over it."""
from __future__ import annotations

import os
from typing import Any

from ..artifacts import detect_artifact
from .backends import BACKENDS
from .core import Runtime
from .errors import BackendError


def artifact_kind(path: str | os.PathLike | bytes) -> str:
    """The backend an artifact runs on by default: ``tensorrt``, ``onnxruntime`` or ``torch``
    (:func:`psvit.artifacts.detect_artifact` decides)."""
    return detect_artifact(path).backend


def _backend(kind: str, source: Any, device: str | None, options: dict[str, Any]) -> Any:
    try:
        if kind == "tensorrt":
            from .tensorrt.backend import TensorRTBackend

            return TensorRTBackend(source, device=device, **options)
        if kind == "onnxruntime":
            from .backends.onnxruntime_backend import OnnxRuntimeBackend

            return OnnxRuntimeBackend(source, device=device, **options)
        from .backends.torch_backend import TorchBackend

        return TorchBackend(source, device=device, **options)
    except TypeError as exc:  # an option this backend does not take
        if "unexpected keyword" not in str(exc):
            raise
        raise BackendError(f"{kind} backend: {exc}; see psvit.runtime.load's docstring for its options") from exc


def load(path: str | os.PathLike | bytes, backend: str = "auto", device: str | None = None, *,
         chunk: int | None = None, name: str | None = None, **options: Any) -> Runtime:
    """Load an engine, ONNX file or checkpoint for inference.

    Args:
        path: an engine (TensorRT/TensorRT-RTX; its ``.engine.json`` sidecar is checked when present), an
            ONNX file (ONNX Runtime), a checkpoint / ``"demo"`` / variant name (PyTorch), or serialized ONNX
            or plan bytes. What it is comes from :func:`psvit.artifacts.detect_artifact` (content first).
        backend: ``auto`` (from the artifact), ``torch``, ``onnxruntime`` or ``tensorrt``.
        device: ``cpu``, ``cuda`` or ``cuda:N``; None means the backend's default (CPU; GPU for engines).
        chunk: the most rows per backend call where the artifact allows any (bounds memory); None: all.
        name: how the runtime is labelled in tables and comparisons (default: the backend's description).
        options: backend options — PyTorch: ``precision`` (fp32/fp16/bf16), ``cuda_graphs``, ``variant``,
            ``seed``, ``fused_attention``, ``threads`` (process-wide in PyTorch); ONNX Runtime:
            ``providers``, ``threads``, ``spinning``, ``profiling``, ``cuda_graphs``, ``optimized_model_path``;
            TensorRT: ``contexts`` (execution contexts = calls at once), ``profiling``.
    """
    if backend not in ("auto", *BACKENDS):
        raise BackendError(f"unknown backend {backend!r}; use auto, {', '.join(BACKENDS)}")
    kind = artifact_kind(path)
    if backend != "auto" and backend != kind:
        raise BackendError(f"{path if not isinstance(path, bytes) else 'the bytes given'} is an artifact for the "
                           f"{kind} backend, not {backend}; use backend='auto' or convert it (psvit-export onnx / trt)")
    if kind == "onnxruntime" and name is not None:
        options["name"] = name
    source = path if isinstance(path, (bytes, bytearray)) or kind != "torch" else str(path)
    return Runtime(_backend(kind, source, device, options), chunk=chunk, name=name)


def from_model(model: Any, *, name: str | None = None, class_names: list[str] | None = None,
               metadata: dict[str, Any] | None = None, device: str | None = None, chunk: int | None = None,
               **options: Any) -> Runtime:
    """A :class:`Runtime` over a PyTorch model already in memory (a PSViT, e.g. ``Checkpoint.model``): the
    same batching and outputs as :func:`load`, without reading its checkpoint again.

    ``options`` are the PyTorch backend's (``precision``, ``cuda_graphs``, ``threads``)."""
    return Runtime(_backend("torch", model, device, {"name": name, "class_names": class_names,
                                                      "metadata": metadata, **options}),
                   chunk=chunk, name=name)
