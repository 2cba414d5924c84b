"""``Runtime``: batched inference over one backend — chunking, padding, input checks, images to labels."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends.base import Backend, Timings
from .batching import chunk_plan, check_batch, pad_rows
from .errors import RuntimeInputError
from .predict import ImageInput, Prediction, as_image_list, check_topk, preprocessor, top_k


class Runtime:
    """Inference on one loaded artifact; build it with :func:`psvit.runtime.load`.

    ``infer`` takes any batch size: it is split into chunks the artifact accepts (a static-batch graph gets
    exactly its batch, an engine at most its profile's max, PyTorch at most ``chunk`` rows), the last chunk
    is zero-padded where needed and the padding rows are dropped from the result.
    Thread safety: as the backend states (``info()["thread_safety"]``); every public method may be called
    from several threads.
    """

    def __init__(self, backend: Backend, chunk: int | None = None) -> None:
        if chunk is not None and chunk < 1:
            raise RuntimeInputError(f"chunk must be at least 1, got {chunk}")
        self.backend = backend
        self.chunk = chunk
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
        return self.backend.description

    def info(self) -> dict[str, Any]:
        b = self.backend
        return {"backend": b.name, "artifact": b.description, "device": b.device, "precision": b.precision,
                "input_shape": list(b.input_shape), "batch": b.limits.describe(), "chunk": self.chunk,
                "classes": len(b.class_names) if b.class_names else None, "thread_safety": b.thread_safety}

    # ---- inference --------------------------------------------------------------------------------
    def infer(self, batch: Any, timings: Timings | None = None) -> Any:
        """Logits ``(N, classes)`` float32 for a float ``(N, C, H, W)`` numpy array or torch tensor.

        A torch tensor gives a torch tensor on its device; anything else gives a numpy array.
        ``timings``, when given, is filled with seconds per phase summed over the chunks.
        """
        if _is_tensor(batch):
            return self._infer_tensor(batch)
        x = np.asarray(batch)
        check_batch(x.shape, x.dtype, x.dtype.kind == "f", self.input_shape, self.name)
        if len(x) == 0:
            raise RuntimeInputError(f"{self.name}: the batch is empty; pass at least one image")
        return self._infer_numpy(x, timings)

    def _infer_numpy(self, x: np.ndarray, timings: Timings | None) -> np.ndarray:
        limits = self.backend.limits
        if limits.static is None and limits.max_batch is None and self.chunk is None:
            return self.backend.run(x, timings)  # any batch in one call: nothing to split
        plan = chunk_plan(len(x), limits, self.chunk)
        if len(plan) == 1 and plan[0][2] == len(x):  # the common case: one call, no copy
            return self.backend.run(x, timings)
        outs = []
        for start, stop, size in plan:
            part_t: Timings | None = {} if timings is not None else None
            out = self.backend.run(pad_rows(x[start:stop], size), part_t)
            outs.append(out[: stop - start])  # drop the padding rows
            if timings is not None and part_t is not None:
                for k, v in part_t.items():
                    timings[k] = timings.get(k, 0.0) + v
        return np.concatenate(outs)

    def _infer_tensor(self, x: Any) -> Any:
        import torch

        check_batch(tuple(x.shape), x.dtype, x.is_floating_point(), self.input_shape, self.name)
        if len(x) == 0:
            raise RuntimeInputError(f"{self.name}: the batch is empty; pass at least one image")
        outs = []
        for start, stop, size in chunk_plan(len(x), self.backend.limits, self.chunk):
            part = x[start:stop]
            if size > stop - start:
                part = torch.cat([part, part.new_zeros((size - (stop - start), *part.shape[1:]))])
            outs.append(self.backend.run_tensor(part)[: stop - start])
        return torch.cat(outs)

    def preprocess_images(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Images -> (B, C, H, W) float32 with the preprocessing recorded in the artifact."""
        if self._preprocess is None:
            self._preprocess = preprocessor(self.backend.preprocess, self.input_shape)
        return self._preprocess.batch(as_image_list(images))

    def predict(self, images: ImageInput | Sequence[ImageInput], topk: int = 5) -> list[list[Prediction]]:
        """Per image, the ``topk`` classes as (index, name, probability), most probable first."""
        check_topk(topk)  # before the work
        return top_k(self.infer(self.preprocess_images(images)), topk, self.class_names)

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


def _is_tensor(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "data_ptr")
