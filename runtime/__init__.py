"""One runtime over TensorRT, ONNX Runtime and PyTorch: batched inference, micro-batching, profiling.

>>> import psvit.runtime as prt
>>> rt = prt.load("model.onnx")                    # or "model.fp16.engine", "demo", "ckpt.safetensors"
>>> logits = rt.infer(batch)                      # any batch size; numpy or torch
>>> rt.predict(["cat.png"], topk=3)               # preprocessing recorded in the artifact
>>> with prt.Batcher(rt, max_batch=32, max_delay_ms=2) as b:
...     future = b.submit(one_image_chw)
"""
from __future__ import annotations

from .api import artifact_kind, load
from .batcher import Batcher
from .core import Runtime
from .errors import (
    ArtifactError, BackendError, BatcherClosedError, BatcherTargetError, QueueFullError, RuntimeInputError,
)
from .predict import Prediction
from .profiler import LatencyStats, latency_stats, parse_warmup, profile_runtime

__all__ = [
    "load", "artifact_kind", "Runtime", "Batcher", "Prediction", "LatencyStats", "latency_stats",
    "parse_warmup", "profile_runtime", "ArtifactError", "BackendError", "BatcherClosedError", "BatcherTargetError",
    "QueueFullError", "RuntimeInputError",
]
