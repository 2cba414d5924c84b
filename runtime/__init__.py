"""One runtime over TensorRT, ONNX Runtime and PyTorch: batched inference, micro-batching, profiling.

>>> import psvit.runtime as prt
>>> rt = prt.load("model.onnx")                    # or "model.fp16.engine", "demo", "ckpt.safetensors"
>>> logits = rt.infer(batch)                      # any batch size; numpy or torch
>>> rt.predict(["cat.png"], topk=3)               # preprocessing recorded in the artifact
>>> with prt.Batcher(rt, max_batch=32, max_delay_ms=2) as b:
...     future = b.submit(one_image_chw)
>>> for r in prt.predict_files(rt, ["photos/", "more/*.jpg"], topk=3):   # loader workers decode ahead
...     print(r.path, r.error or r.predictions[0].name)
>>> prt.predict_to_file("model.onnx", ["photos/"], "preds.jsonl", resume=True)   # resumable output file
"""
from __future__ import annotations

from .api import artifact_kind, load
from .batcher import Batcher
from .core import Runtime
from .errors import ArtifactError, BackendError, BatcherClosedError, OutputError, QueueFullError, RuntimeInputError
from .file_predict import FileResult, PredictionStream, PredictStats, predict_files
from .predict import Prediction
from .predict_job import PredictSummary, predict_to_file
from .prediction_output import read_predictions
from .profiler import LatencyStats, latency_stats, parse_warmup, profile_runtime
from .ray_predict import RaySettings

__all__ = [
    "load", "artifact_kind", "Runtime", "Batcher", "Prediction", "LatencyStats", "latency_stats",
    "parse_warmup", "profile_runtime", "ArtifactError", "BackendError", "BatcherClosedError",
    "QueueFullError", "RuntimeInputError", "OutputError", "predict_files", "PredictionStream", "FileResult",
    "PredictStats", "predict_to_file", "PredictSummary", "read_predictions", "RaySettings",
]
