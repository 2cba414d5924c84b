"""Runners: one call interface over PyTorch and ONNX Runtime, so verification and ``compare`` accept either.

A runner takes a float32 batch ``(N, C, H, W)`` of any size and returns ``{output name: float32 array}``;
it splits the batch into chunks the artifact accepts (a fixed-batch ONNX graph gets exactly its batch,
the last chunk zero-padded) and casts to and from the artifact's I/O precision.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import PSViTError, require
from .errors import ExportError

if TYPE_CHECKING:
    import onnx

    from .sources import ModelSource

TORCH_CHUNK = 32  # images per PyTorch forward, to bound memory


class Runner(Protocol):
    name: str
    input_shape: tuple[int, ...]  # (C, H, W)
    static_batch: int | None
    output_names: list[str]
    preprocess: dict[str, Any] | None

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]: ...


def _chunks(x: np.ndarray, static_batch: int | None, cap: int | None = None) -> list[tuple[np.ndarray, int]]:
    """(chunk, valid rows) pairs along the batch axis, by the runtime's chunk plan (fixed batches padded)."""
    from ..runtime.batching import BatchLimits, chunk_plan, pad_rows

    return [(pad_rows(x[start:stop], size), stop - start)
            for start, stop, size in chunk_plan(len(x), BatchLimits(static=static_batch), cap)]


def _check_input(runner: Runner, x: np.ndarray) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(runner.input_shape):
        raise PSViTError(
            f"{runner.name} expects inputs of shape (N, {', '.join(map(str, runner.input_shape))}), "
            f"got {tuple(x.shape)}"
        )


class TorchRunner:
    """A PyTorch model (FP32, eval mode) from a :class:`ModelSource`."""

    static_batch = None
    output_names = ["logits"]

    def __init__(self, source: "ModelSource") -> None:
        self.source = source
        self.model = source.model.eval()
        cfg = source.config
        self.name = source.description
        self.input_shape = (cfg.in_chans, cfg.img_size, cfg.img_size)
        self.preprocess = source.preprocess

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        _check_input(self, x)
        outs = []
        with torch.no_grad():
            for part, _ in _chunks(np.ascontiguousarray(x, np.float32), None, TORCH_CHUNK):
                outs.append(self.model(torch.from_numpy(part)).numpy())
        return {"logits": np.concatenate(outs).astype(np.float32)}


class OnnxRuntimeRunner:
    """An ONNX model on ONNX Runtime's CPU execution provider."""

    def __init__(
        self,
        model: "str | os.PathLike | onnx.ModelProto",
        name: str | None = None,
        threads: int | None = None,
    ) -> None:
        ort = require("onnxruntime", "onnxruntime", "running ONNX models")
        import onnx

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        if isinstance(model, onnx.ModelProto):
            src: Any = model.SerializeToString()
            self.name = name or "ONNX model (in memory)"
        else:
            path = Path(model)
            if not path.is_file():
                raise ExportError(f"ONNX file {path} does not exist; check the path (`psvit-export onnx` writes one)")
            src = str(path)
            self.name = name or str(path)
        from ..runtime.backends.onnxruntime_backend import open_classifier_session

        self.session, inp = open_classifier_session(
            ort, src, opts, ["CPUExecutionProvider"], self.name, error=ExportError
        )
        self.input_name = inp.name
        self.static_batch = inp.static_batch
        self.input_shape = inp.shape
        self.input_dtype = inp.dtype
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        raw = self.metadata.get("psvit.preprocess")
        self.preprocess = json.loads(raw) if raw else None

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        _check_input(self, x)
        results: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        for part, valid in _chunks(np.asarray(x), self.static_batch):
            outs = self.session.run(None, {self.input_name: part.astype(self.input_dtype)})
            for name, out in zip(self.output_names, outs):
                results[name].append(np.asarray(out)[:valid])
        return {n: np.concatenate(v).astype(np.float32) for n, v in results.items()}


def open_artifact(spec: str | os.PathLike, *, variant: str | None = None, seed: int = 0) -> Runner:
    """A runner for an ``.onnx`` file or anything :func:`psvit.export.sources.load_source` accepts."""
    from .sources import load_source

    if str(spec).endswith(".onnx"):
        return OnnxRuntimeRunner(spec)
    return TorchRunner(load_source(spec, variant=variant, seed=seed))
