"""``Runtime``: batched inference over one backend — chunking, padding, input checks, images to labels,
warm-up and asyncio."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends.base import Backend, Concurrency, Outputs, Timings
from .batching import chunk_plan, check_batch, pad_rows
from .errors import RuntimeInputError
from .predict import ImageInput, Prediction, as_image_list, check_topk, preprocessor, top_k


class Runtime:
    """Inference on one loaded artifact; build it with :func:`psvit.runtime.load`.

    ``infer`` takes any batch size: it is split into chunks the artifact accepts (a static-batch graph gets
    exactly its batch, an engine at most its profile's max, PyTorch at most ``chunk`` rows), the last chunk
    is zero-padded where needed and the padding rows are dropped from the result. Every output of the
    artifact is returned: the array of a one-output model, a dict ``{name: array}`` when there are several.
    Concurrency: as the backend states (:attr:`concurrency`, also ``info()["concurrency"]``); every public
    method may be called from several threads.
    """

    def __init__(self, backend: Backend, chunk: int | None = None, name: str | None = None) -> None:
        if chunk is not None and chunk < 1:
            raise RuntimeInputError(f"chunk must be at least 1, got {chunk}")
        self.backend = backend
        self.chunk = chunk
        self._name = name
        self._preprocess = None

    # ---- facts ------------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.backend.input_shape

    @property
    def class_names(self) -> list[str] | None:
        return self.backend.class_names

    @property
    def name(self) -> str:
        return self._name or self.backend.description

    @property
    def output_names(self) -> list[str]:
        return list(self.backend.output_names)

    @property
    def concurrency(self) -> Concurrency:
        return self.backend.concurrency

    def info(self) -> dict[str, Any]:
        b = self.backend
        return {"backend": b.name, "artifact": b.description, "device": b.device, "precision": b.precision,
                "input_shape": list(b.input_shape), "outputs": self.output_names, "batch": b.limits.describe(),
                "chunk": self.chunk, "classes": len(b.class_names) if b.class_names else None,
                "concurrency": self.concurrency.to_dict()}

    # ---- inference --------------------------------------------------------------------------------
    def infer(self, batch: Any, timings: Timings | None = None) -> Any:
        """Outputs for a float ``(N, C, H, W)`` numpy array or torch tensor: logits ``(N, classes)`` float32
        for a classifier (a dict ``{name: array}`` for artifacts with several outputs).

        A torch tensor gives torch tensors on its device; anything else gives numpy arrays.
        ``timings``, when given, is filled with seconds per phase summed over the chunks.
        """
        if _is_tensor(batch):
            return self._infer_tensor(batch)
        x = self._checked(batch)
        return self._infer_numpy(x, timings)

    async def ainfer(self, batch: Any) -> Any:
        """:meth:`infer` for asyncio: each chunk runs through the backend's asynchronous call (ONNX Runtime's
        ``run_async`` on the CPU, a worker thread elsewhere), so the event loop is never blocked."""
        if _is_tensor(batch):
            return await asyncio.to_thread(self._infer_tensor, batch)
        x = self._checked(batch)
        outs = []
        for start, stop, size in self._plan(len(x)):
            outs.append(_rows(await self.backend.arun(pad_rows(x[start:stop], size)), stop - start))
        return _join(outs)

    def warmup(self, batches: Sequence[int] | None = None, iterations: int = 2) -> dict[int, float]:
        """Run zero batches so that lazy work (allocations, kernel selection, CUDA graph capture, memory
        arenas) happens before the first real request; returns seconds per batch size.

        ``batches``: the batch sizes to prepare (None: the smallest and the largest the artifact runs in one
        call: its fixed batch, its profile's min and max, or 1 and ``chunk``).
        """
        if iterations < 1:
            raise RuntimeInputError(f"warm-up iterations must be at least 1, got {iterations}")
        limits = self.backend.limits
        if batches is None:
            top = limits.static or limits.max_batch or self.chunk or 1
            batches = sorted({limits.static or limits.min_batch, top})
        seconds = {}
        for n in batches:
            if n < 1:
                raise RuntimeInputError(f"warm-up batch sizes must be at least 1, got {n}")
            x = np.zeros((n, *self.input_shape), dtype=np.float32)
            t0 = time.perf_counter()
            for _ in range(iterations):
                self.infer(x)
            seconds[n] = time.perf_counter() - t0
        return seconds

    def _checked(self, batch: Any) -> np.ndarray:
        x = np.asarray(batch)
        check_batch(x.shape, x.dtype, x.dtype.kind == "f", self.input_shape, self.name)
        if len(x) == 0:
            raise RuntimeInputError(f"{self.name}: the batch is empty; pass at least one image")
        return x

    def _plan(self, n: int) -> list[tuple[int, int, int]]:
        return chunk_plan(n, self.backend.limits, self.chunk)

    def _infer_numpy(self, x: np.ndarray, timings: Timings | None) -> Outputs:
        limits = self.backend.limits
        if limits.static is None and limits.max_batch is None and self.chunk is None:
            return self.backend.run(x, timings)  # any batch in one call: nothing to split
        plan = self._plan(len(x))
        if len(plan) == 1 and plan[0][2] == len(x):  # the common case: one call, no copy
            return self.backend.run(x, timings)
        outs = []
        for start, stop, size in plan:
            part_t: Timings | None = {} if timings is not None else None
            out = self.backend.run(pad_rows(x[start:stop], size), part_t)
            outs.append(_rows(out, stop - start))  # drop the padding rows
            if timings is not None and part_t is not None:
                for k, v in part_t.items():
                    timings[k] = timings.get(k, 0.0) + v
        return _join(outs)

    def _infer_tensor(self, x: Any) -> Any:
        import torch

        check_batch(tuple(x.shape), x.dtype, x.is_floating_point(), self.input_shape, self.name)
        if len(x) == 0:
            raise RuntimeInputError(f"{self.name}: the batch is empty; pass at least one image")
        outs = []
        for start, stop, size in self._plan(len(x)):
            part = x[start:stop]
            if size > stop - start:
                part = torch.cat([part, part.new_zeros((size - (stop - start), *part.shape[1:]))])
            outs.append(_rows(self.backend.run_tensor(part), stop - start))
        return _join(outs, cat=torch.cat)

    def preprocess_images(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Images -> (B, C, H, W) float32 with the preprocessing recorded in the artifact."""
        if self._preprocess is None:
            self._preprocess = preprocessor(self.backend.preprocess, self.input_shape)
        return self._preprocess.batch(as_image_list(images))

    def predict(self, images: ImageInput | Sequence[ImageInput], topk: int = 5) -> list[list[Prediction]]:
        """Per image, the ``topk`` classes as (index, name, probability), most probable first (from the
        first output of an artifact with several)."""
        check_topk(topk)  # before the work
        return self.top_k(self.infer(self.preprocess_images(images)), topk)

    def top_k(self, outputs: Outputs, topk: int) -> list[list[Prediction]]:
        """Per row of :meth:`infer`'s ``outputs``, the ``topk`` classes (from the first output of an artifact
        with several)."""
        return top_k(outputs[self.output_names[0]] if isinstance(outputs, dict) else outputs, topk,
                     self.class_names)

    # ---- lifetime ---------------------------------------------------------------------------------
    def layer_profile(self) -> dict[str, dict[str, float]] | None:
        return self.backend.layer_profile()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runtime({self.name}, {self.backend.limits.describe()})"


def _rows(out: Any, n: int) -> Any:
    """The first ``n`` rows of one output or of each output of a dict."""
    return {k: v[:n] for k, v in out.items()} if isinstance(out, dict) else out[:n]


def _join(parts: list[Any], cat: Any = np.concatenate) -> Any:
    """Chunks joined along the batch axis, per output for dicts."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], dict):
        return {k: cat([p[k] for p in parts]) for k in parts[0]}
    return cat(parts)


def _is_tensor(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "data_ptr")
