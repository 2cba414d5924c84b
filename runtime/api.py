"""``load``: pick the backend for an artifact and build a :class:`Runtime` over it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .backends import BACKENDS
from .core import Runtime
from .errors import ArtifactError, BackendError

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def artifact_kind(path: str | os.PathLike) -> str:
    """The backend an artifact runs on by default: ``tensorrt``, ``onnxruntime`` or ``torch``."""
    text = str(path)
    suffix = Path(text).suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in CHECKPOINT_SUFFIXES or text == "demo":
        return "torch"
    from psvit.registry import list_models

    if text in list_models():
        return "torch"
    raise ArtifactError(
        f"cannot tell what {text!r} is: expected an engine ({', '.join(ENGINE_SUFFIXES)}), an .onnx file, a "
        f"checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}), 'demo' or a variant name"
    )


def load(path: str | os.PathLike, backend: str = "auto", device: str | None = None, *,
         chunk: int | None = None, **options: Any) -> Runtime:
    """Load an engine, ONNX file or checkpoint for inference.

    Args:
        path: ``*.engine`` (TensorRT/TensorRT-RTX, with its ``.engine.json`` sidecar), ``*.onnx`` (ONNX
            Runtime) or a checkpoint / ``"demo"`` / variant name (PyTorch).
        backend: ``auto`` (from the artifact), ``torch``, ``onnxruntime`` or ``tensorrt``.
        device: ``cpu``, ``cuda`` or ``cuda:N``; None means the backend's default (CPU; GPU for engines).
        chunk: the most rows per backend call where the artifact allows any (bounds memory); None: all.
        options: backend options — PyTorch: ``precision`` (fp32/fp16/bf16), ``cuda_graphs``, ``variant``,
            ``seed``, ``fused_attention``, ``threads`` (process-wide in PyTorch); ONNX Runtime: ``providers``,
            ``threads``, ``spinning``, ``profiling``, ``cuda_graph``, ``optimized_model_path``; TensorRT:
            ``profiling``.
    """
    if backend not in ("auto", *BACKENDS):
        raise BackendError(f"unknown backend {backend!r}; use auto, {', '.join(BACKENDS)}")
    kind = artifact_kind(path)
    if backend != "auto" and backend != kind:
        raise BackendError(f"{path} is an artifact for the {kind} backend, not {backend}; use backend='auto' "
                           f"or convert it (psvit-export onnx / trt)")
    try:
        if kind == "tensorrt":
            from .backends.tensorrt_backend import TensorRTBackend

            impl: Any = TensorRTBackend(path, device=device, **options)
        elif kind == "onnxruntime":
            from .backends.onnxruntime_backend import OnnxRuntimeBackend

            impl = OnnxRuntimeBackend(path, device=device, **options)
        else:
            from .backends.torch_backend import TorchBackend

            impl = TorchBackend(str(path), device=device, **options)
    except TypeError as exc:  # an option this backend does not take
        if "unexpected keyword" not in str(exc):
            raise
        raise BackendError(f"{kind} backend: {exc}; see psvit.runtime.load's docstring for its options") from exc
    return Runtime(impl, chunk=chunk)
