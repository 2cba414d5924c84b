"""One runtime over TensorRT, ONNX Runtime and PyTorch: batched inference, micro-batching, profiling.

>>> import psvit.runtime as prt
>>> rt = prt.load("model.onnx")                    # or "model.fp16.engine", "demo", "ckpt.safetensors"
>>> rt.warmup()                                   # allocations and kernel choices before the first request
>>> logits = rt.infer(batch)                      # any batch size; numpy or torch
>>> logits = await rt.ainfer(batch)               # from asyncio code
>>> rt.predict(["cat.png"], topk=3)               # preprocessing recorded in the artifact
>>> rt.concurrency                                # Concurrency(thread_safe=True, max_parallel=None, ...)
>>> with prt.Batcher(rt, max_batch=32, max_delay_ms=2) as b:
...     future = b.submit(one_image_chw)
>>> for r in prt.predict_files(rt, ["photos/", "more/*.jpg"], topk=3):   # loader workers decode ahead
...     print(r.path, r.error or r.predictions[0].name)
>>> prt.predict_to_file("model.onnx", ["photos/"], "preds.jsonl", resume=True)   # resumable output file

Importing this package imports neither torch nor onnx; loading an ONNX file or an engine does not either
(PyTorch is imported for checkpoints, and for the GPU buffers of an engine that actually runs).
"""
from __future__ import annotations

from .api import artifact_kind, from_model, load
from .backends.base import Concurrency
from .batcher import Batcher
from .core import Runtime
from .errors import (
    ArtifactError, BackendError, BatcherClosedError, BatcherTargetError, EngineMismatchError, OutputError,
    QueueFullError, RuntimeInputError,
)
from .file_predict import FileResult, PredictionStream, PredictStats, predict_files
from .predict import Prediction
from .predict_job import PredictSummary, predict_to_file
from .prediction_output import read_predictions
from .profiler import LatencyStats, latency_stats, parse_warmup, profile_runtime
from .ray_predict import RaySettings

__all__ = [
    "load", "from_model", "artifact_kind", "Runtime", "Concurrency", "Batcher", "Prediction", "LatencyStats",
    "latency_stats", "parse_warmup", "profile_runtime", "ArtifactError", "BackendError", "BatcherClosedError",
    "BatcherTargetError", "EngineMismatchError", "QueueFullError", "RuntimeInputError",
    "OutputError", "predict_files", "PredictionStream", "FileResult", "PredictStats", "predict_to_file",
    "PredictSummary", "read_predictions", "RaySettings",
]
