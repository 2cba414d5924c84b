"""Calibration methods: our names -> ONNX Runtime calibrators, and an MSE range search.

ONNX Runtime offers MinMax, Percentile, Entropy and Distribution (the last fits FP8, not INT8).
``quantize_static`` does not pass a bin count to its calibrators, and its Entropy default (128 bins, 128
quantized bins) leaves one candidate threshold — the max — so ``entropy`` runs ORT's Entropy calibrator
directly with 512 bins. ORT has no MSE calibrator, so ``mse`` collects ORT's histograms of |x| (its
Percentile collector) and picks, per tensor, the clipping threshold minimising the expected squared error
of symmetric INT8 (rounding noise step²/12 inside the range, (|x| - t)² beyond it). Only that search is
ours; histograms and thresholds of the other methods come from ORT.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CalibrationError

METHODS = ("max", "percentile", "entropy", "mse")
ORT_METHOD = {"max": "MinMax", "percentile": "Percentile", "entropy": "Entropy", "mse": "Percentile"}
PERCENTILE = 99.999
NUM_BINS = 2048
ENTROPY_BINS = 512  # ORT's threshold search is quadratic in the bins: 2048 takes ~45 s here, 512 ~3 s


def check_method(method: str) -> str:
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    return method


def parameters(method: str) -> dict[str, Any]:
    """The calibrator parameters recorded in the cache (part of its key)."""
    params: dict[str, Any] = {"symmetric": True, "per_channel_weights": True}
    if method == "percentile":
        params |= {"percentile": PERCENTILE, "num_bins": NUM_BINS}
    elif method == "entropy":
        params |= {"num_bins": ENTROPY_BINS, "num_quantized_bins": 128}
    elif method == "mse":
        params |= {"num_bins": NUM_BINS, "search": "expected INT8 MSE over |x| histogram"}
    return params


def ort_extra_options(method: str) -> dict[str, Any]:
    """``extra_options`` keys of ``quantize_static`` that set the calibrator up."""
    opts: dict[str, Any] = {"CalibTensorRangeSymmetric": True}
    if method in ("percentile", "mse"):
        opts |= {"CalibPercentile": PERCENTILE}  # ORT's default of 2048 histogram bins
    return opts


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


def entropy_ranges(model_path: Path, reader: Any, op_types: Sequence[str], workdir: Path) -> Any:
    """ORT ``TensorsData`` from ORT's Entropy calibrator with 2048 bins (symmetric)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(
        model_path, list(op_types), augmented_model_path=str(workdir / "augmented_entropy.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"symmetric": True, "num_bins": ENTROPY_BINS, "num_quantized_bins": 128},
    )
    calibrator.collect_data(reader)
    return calibrator.compute_data()


def mse_ranges(model_path: Path, reader: Any, op_types: Sequence[str], workdir: Path) -> Any:
    """ORT ``TensorsData`` with MSE-optimal symmetric ranges (histograms collected by ORT)."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod, TensorData, TensorsData, create_calibrator,
    )

    calibrator = create_calibrator(
        model_path, list(op_types), augmented_model_path=str(workdir / "augmented_mse.onnx"),
        calibrate_method=CalibrationMethod.Percentile,
        extra_options={"symmetric": True, "num_bins": NUM_BINS, "percentile": PERCENTILE},
    )
    calibrator.collect_data(reader)
    ranges = {}
    for name, (hist, edges, *_rest) in calibrator.collector.histogram_dict.items():
        t = np.float32(mse_threshold(np.asarray(hist), np.asarray(edges, np.float64)))
        ranges[name] = TensorData(lowest=np.array(-t, np.float32), highest=np.array(t, np.float32))
    return TensorsData(CalibrationMethod.Percentile, ranges)
