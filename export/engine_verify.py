"""Engine outputs vs its ONNX on ONNX Runtime: runs only where ``tensorrt``/``tensorrt_rtx`` and a GPU that
runs the engine exist (PyTorch CUDA tensors hold the buffers, so no pycuda/cuda-python is needed)."""
from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .errors import EngineBuildError
from .runners import _chunks
from .verify import Comparison, compare

MAX_REL_L2 = {"fp32": 1e-3, "fp16": 5e-3, "int8": 5e-2}  # engine vs its own ONNX (TF32 allowed in FP32)


class EngineRunner:
    """A deserialized engine as a :class:`psvit.export.runners.Runner` (float32 batches in and out)."""

    static_batch: int | None
    preprocess = None

    def __init__(self, trt: ModuleType, plan: bytes, logger: Any, name: str, max_batch: int | None) -> None:
        import torch

        self.torch = torch
        self.trt = trt
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineBuildError(f"{name} cannot be deserialized on this GPU")
        self.context = self.engine.create_execution_context()
        self.name = name
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.inputs]
        shape = list(self.engine.get_tensor_shape(self.inputs[0]))
        self.input_shape = tuple(int(d) for d in shape[1:])
        self.static_batch = shape[0] if shape[0] > 0 else None
        self.max_batch = self.static_batch or max_batch or 1

    def _torch_dtype(self, tensor: str) -> Any:
        return self.torch.from_numpy(np.empty(0, self.trt.nptype(self.engine.get_tensor_dtype(tensor)))).dtype

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        outs: dict[str, list[np.ndarray]] = {n: [] for n in self.output_names}
        stream = torch.cuda.Stream()
        for part, valid in _chunks(np.asarray(x), self.static_batch, self.max_batch):  # fixed batch: zero-padded
            inp = torch.from_numpy(np.ascontiguousarray(part)).to("cuda", self._torch_dtype(self.inputs[0]))
            self.context.set_input_shape(self.inputs[0], tuple(inp.shape))
            self.context.set_tensor_address(self.inputs[0], inp.data_ptr())
            buffers = {}
            for n in self.output_names:
                buffers[n] = torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self._torch_dtype(n),
                                         device="cuda")
                self.context.set_tensor_address(n, buffers[n].data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise EngineBuildError(f"{self.name}: execution failed")
            stream.synchronize()
            for n in self.output_names:
                outs[n].append(buffers[n].float().cpu().numpy()[:valid])
        return {n: np.concatenate(v) for n, v in outs.items()}


def verify_engine(
    trt: ModuleType,
    plan: bytes,
    logger: Any,
    onnx_path: str | os.PathLike,
    precision: str,
    inputs: np.ndarray,
    *,
    max_batch: int | None = None,
) -> Comparison:
    """Compare the engine with ``onnx_path`` on ONNX Runtime CPU for ``inputs``; tolerance by precision."""
    from .runners import OnnxRuntimeRunner

    reference = OnnxRuntimeRunner(onnx_path, name=f"ONNX {Path(onnx_path).name}")
    engine = EngineRunner(trt, plan, logger, name=f"{precision.upper()} engine", max_batch=max_batch)
    return compare(reference, engine, inputs, max_rel_l2=MAX_REL_L2[precision])
