"""Calibration methods: our names -> ONNX Runtime calibrators and their settings, an MSE range search, and how
many images each method needs.

ONNX Runtime offers MinMax, Percentile, Entropy and Distribution (the last fits FP8, not INT8).
``quantize_static`` does not pass a bin count to its calibrators, and its Entropy default (128 bins, 128
quantized bins) leaves one candidate threshold — the max — so ``entropy`` uses ORT's Entropy threshold search
on 512 bins. ORT has no MSE calibrator, so ``mse`` takes the |x| histograms of ORT's Percentile method and
picks, per tensor, the clipping threshold minimising the expected squared error of symmetric INT8 (rounding
noise step²/12 inside the range, (|x| - t)² beyond it). How the histograms are collected batch by batch is
:mod:`psvit.calibration.collect`'s business.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CalibrationError

METHODS = ("max", "percentile", "entropy", "mse")
ORT_METHOD = {"max": "MinMax", "percentile": "Percentile", "entropy": "Entropy", "mse": "Percentile"}
PERCENTILE = 99.999
NUM_BINS = 2048
ENTROPY_BINS = 512  # ORT's threshold search is quadratic in the bins: 2048 takes ~45 s here, 512 ~3 s
ENTROPY_QUANTIZED_BINS = 128
# Fewer images than this draws a warning: the smallest count at which, on the demo model, the median tensor's
# range is within 5% of its 2,048-image value and the 90th percentile within 20%
# (benchmarks/calibration_convergence.py). The max keeps growing with the sample, and entropy's threshold
# follows the histogram's tail; the 99.999th percentile and the MSE optimum settle sooner.
MIN_IMAGES = {"max": 256, "percentile": 64, "entropy": 256, "mse": 16}


@dataclass(frozen=True)
class HistogramSpec:
    """The histogram a method's threshold search reads: ``bins`` over |x| in [0, max|x|] (``absolute``) or
    over x in [-max|x|, max|x|] — the layouts of ORT's Percentile (symmetric) and Entropy collectors."""

    bins: int
    absolute: bool


def check_method(method: str) -> str:
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    return method


def histogram_spec(method: str) -> HistogramSpec | None:
    """None for ``max`` (a running min/max is all it needs)."""
    if method == "entropy":
        return HistogramSpec(ENTROPY_BINS, absolute=False)
    if method in ("percentile", "mse"):
        return HistogramSpec(NUM_BINS, absolute=True)
    return None


def parameters(method: str) -> dict[str, Any]:
    """The calibrator parameters recorded in the cache (part of its key)."""
    params: dict[str, Any] = {"symmetric": True, "per_channel_weights": True}
    if method == "percentile":
        params |= {"percentile": PERCENTILE, "num_bins": NUM_BINS}
    elif method == "entropy":
        params |= {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
    elif method == "mse":
        params |= {"num_bins": NUM_BINS, "search": "expected INT8 MSE over |x| histogram"}
    return params


def ort_extra_options(method: str) -> dict[str, Any]:
    """``extra_options`` keys of ``quantize_static`` that set the calibrator up."""
    opts: dict[str, Any] = {"CalibTensorRangeSymmetric": True}
    if method in ("percentile", "mse"):
        opts |= {"CalibPercentile": PERCENTILE}  # ORT's default of 2048 histogram bins
    return opts


def count_warning(method: str, images: int) -> str | None:
    """A warning when ``images`` are fewer than ``method`` needs (None when enough)."""
    need = MIN_IMAGES[method]
    if images >= need:
        return None
    from .data import DEFAULT_COUNT

    return (f"{images} calibration image{'s' if images != 1 else ''} {'is' if images == 1 else 'are'} fewer than "
            f"the {need} that {method} calibration needs for stable ranges; give at least {need} images "
            f"(--calib-count, default {DEFAULT_COUNT})")


def mse_threshold(hist: np.ndarray, edges: np.ndarray, levels: int = 127) -> float:
    """Clipping threshold t minimising the expected squared error of symmetric INT8 over a |x| histogram."""
    centers = (edges[:-1] + edges[1:]) / 2.0
    counts = hist.astype(np.float64)
    if counts.sum() == 0 or edges[-1] <= 0:
        return float(edges[-1])
    best_t, best_err = float(edges[-1]), np.inf
    for t in edges[max(1, len(edges) // 64)::max(1, len(edges) // 512)]:  # ~512 candidates
        step = t / levels
        clipped = centers > t
        err = np.sum(counts[~clipped]) * step * step / 12.0 + np.sum(counts[clipped] * (centers[clipped] - t) ** 2)
        if err < best_err:
            best_t, best_err = float(t), err
    return best_t
