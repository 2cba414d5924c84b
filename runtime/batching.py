"""Split a batch of any size into the chunks an artifact accepts, pad the last one, strip the padding.

A chunk plan is a list of ``(start, stop, run_size)``: rows ``start:stop`` of the input run as one call of
``run_size`` rows (``run_size > stop - start`` means zero padding). Static-batch graphs get exactly their
batch; engines with a profile get at most the profile's max (and at least its min, padding if needed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import RuntimeInputError


@dataclass(frozen=True)
class BatchLimits:
    """What one call of a backend accepts: a fixed batch, or a range ``min_batch..max_batch`` (None: any)."""

    static: int | None = None
    min_batch: int = 1
    max_batch: int | None = None

    def describe(self) -> str:
        if self.static is not None:
            return f"fixed batch {self.static}"
        if self.max_batch is None:
            return "any batch"
        return f"batch {self.min_batch}..{self.max_batch}"


def chunk_plan(n: int, limits: BatchLimits, chunk: int | None = None) -> list[tuple[int, int, int]]:
    """Chunks for ``n`` rows; ``chunk`` caps the rows per call (e.g. to bound memory) where the artifact allows."""
    if n < 0:
        raise RuntimeInputError(f"batch size must be >= 0, got {n}")
    if limits.static is not None:
        size = limits.static
        return [(s, min(s + size, n), size) for s in range(0, n, size)]
    cap = limits.max_batch
    if chunk is not None:
        cap = chunk if cap is None else min(cap, chunk)
    cap = cap or max(n, 1)
    plan = []
    for s in range(0, n, cap):
        stop = min(s + cap, n)
        plan.append((s, stop, max(stop - s, limits.min_batch)))
    return plan


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """``x`` with zero rows appended up to ``size`` rows (``x`` itself if it already has them)."""
    if len(x) >= size:
        return x
    pad = np.zeros((size - len(x), *x.shape[1:]), dtype=x.dtype)
    return np.concatenate([x, pad])  # (size, C, H, W)


def check_batch(shape: tuple[int, ...], dtype: Any, is_float: bool, input_shape: tuple[int, ...], what: str) -> None:
    """Raise :class:`RuntimeInputError` unless ``shape``/``dtype`` describe a float (N, C, H, W) batch of
    ``input_shape`` images (numpy arrays and torch tensors alike)."""
    if is_float and len(shape) == len(input_shape) + 1 and tuple(shape[1:]) == tuple(input_shape):
        return  # the hot path: no message formatting
    if len(input_shape) != 3:  # not an image input (e.g. a probe graph of the FP16 range check)
        raise RuntimeInputError(f"{what} expects float batches of shape (N, {', '.join(map(str, input_shape))}), "
                                f"got {str(dtype).removeprefix('torch.')} {tuple(int(d) for d in shape)}")
    c, h, w = input_shape
    dtype = str(dtype).removeprefix("torch.")
    shape = tuple(int(d) for d in shape)
    expect = f"{what} expects float32 (N, {c}, {h}, {w}) batches"
    if len(shape) != 4:
        hint = "; add the batch axis with x[None]" if len(shape) == 3 else ""
        raise RuntimeInputError(f"{expect}, got a {len(shape)}-D input of shape {shape}{hint}")
    if not is_float:
        raise RuntimeInputError(
            f"{expect}, got dtype {dtype}; preprocess images first (Runtime.predict takes raw images)"
        )
    if shape[1] != c:
        layout = " (channels-last? transpose with x.transpose(0, 3, 1, 2))" if shape[-1] == c else ""
        raise RuntimeInputError(f"{expect}, got {shape[1]} channels in shape {shape}{layout}")
    if shape[2:] != (h, w):
        raise RuntimeInputError(
            f"{expect}, got images of {shape[2]}x{shape[3]}; resize them to {h}x{w} (Runtime.predict "
            f"applies the artifact's preprocessing)"
        )
