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


def _chunks(x: np.ndarray, size: int, pad: bool) -> list[tuple[np.ndarray, int]]:
    """Split along the batch axis; with ``pad`` the last chunk is zero-padded to ``size``."""
    out = []
    for start in range(0, len(x), size):
        part = x[start:start + size]
        valid = len(part)
        if pad and valid < size:
            part = np.concatenate([part, np.zeros((size - valid, *part.shape[1:]), part.dtype)])
        out.append((part, valid))
    return out


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
            for part, _ in _chunks(np.ascontiguousarray(x, np.float32), TORCH_CHUNK, pad=False):
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
                raise ExportError(f"ONNX file {path} does not exist")
            src = str(path)
            self.name = name or str(path)
        try:
            self.session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise ExportError(
                f"ONNX Runtime cannot load {self.name}: {str(exc).splitlines()[0]}"
            ) from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ExportError(f"{self.name} is not an image classifier graph (one input (N, C, H, W) expected)")
        inp = inputs[0]
        self.input_name = inp.name
        self.static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        if not all(isinstance(d, int) for d in inp.shape[1:]):
            raise ExportError(f"{self.name} has a dynamic image size {inp.shape}; export it with a fixed one")
        self.input_shape = tuple(int(d) for d in inp.shape[1:])
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        raw = self.metadata.get("psvit.preprocess")
        self.preprocess = json.loads(raw) if raw else None

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        _check_input(self, x)
        size = self.static_batch or max(len(x), 1)
        results: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        for part, valid in _chunks(np.asarray(x), size, pad=self.static_batch is not None):
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
