"""Streaming calibration: each batch is reduced to running statistics and dropped, so memory does not depend
on the number of images, and the ranges do not depend on how the images are split into batches.

- Pass 1, every method: ONNX Runtime's MinMax calibrator fed one batch per ``collect_data`` call (the
  stride-by-stride use its maintainers advise, microsoft/onnxruntime#11020): exact per-tensor min and max.
  That is all ``max`` needs.
- Pass 2, ``percentile``/``entropy``/``mse``: histograms over the range pass 1 found, summed batch by batch —
  |x| in [0, max|x|] (2048 bins) or x in [-max|x|, max|x|] (512 bins, entropy), the layouts of ORT's
  Percentile and Entropy collectors. Thresholds come from ORT's ``HistogramCollector`` (percentile,
  entropy) and from :func:`.methods.mse_threshold`.

Why not ORT's own histogram merging (``HistogramCollector.collect`` per batch): it fixes the bin width from
the first batch and adds bins as the range grows, so the histogram — and the entropy threshold searched on
it — depends on the batching: on the demo model, entropy thresholds moved by a median 3% (up to 40% for
some tensors) against the all-at-once histogram, differently for batches of 1, 4, 16 and 64
(benchmarks/README.md). With the range known before the histograms, the counts are exactly those of
ORT's all-at-once histograms, whatever the batching.

A fixed-batch graph gets its batch: a short last batch is filled by repeating images, and only the rows
of real images enter the histograms (repeats cannot change a min or max).
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import CalibrationSet
from .methods import ENTROPY_QUANTIZED_BINS, ORT_METHOD, PERCENTILE, HistogramSpec, histogram_spec, mse_threshold
from .progress import PassMeter, ProgressCallback


@dataclass
class Calibration:
    """Per-tensor ranges (ORT ``TensorsData``) and what it took to get them."""

    ranges: Any
    images: int
    passes: int
    seconds: float


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """Silence ORT quantization's root-logger advice (pre-processing hints) and calibrator prints."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


class _OneBatch:
    """An ORT ``CalibrationDataReader`` that yields one feed, then ends."""

    def __init__(self, feed: dict[str, np.ndarray]) -> None:
        self._feed: dict[str, np.ndarray] | None = feed

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed, self._feed = self._feed, None
        return feed


def _feeds(data: CalibrationSet, input_name: str, batch: int, static_batch: int | None
           ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """(feed, number of real images in it); a fixed-batch graph gets its batch, filled by repeating images."""
    for images in data.batches(static_batch or batch):  # (B, C, H, W)
        real = len(images)
        if static_batch is not None and real < static_batch:
            images = np.resize(images, (static_batch, *images.shape[1:]))
        yield {input_name: images}, real


def _real_rows(values: np.ndarray, real: int, fed: int) -> np.ndarray:
    """The part of an activation that belongs to the ``real`` first of ``fed`` images (batch-major rows)."""
    if real == fed or values.ndim == 0 or values.shape[0] % fed:
        return values
    return values[: values.shape[0] // fed * real]


class FixedRangeHistograms:
    """Per-tensor histograms over ranges known in advance, summed batch by batch, in the tuple layout of ORT's
    ``HistogramCollector.histogram_dict`` (its threshold searches read them as they are)."""

    def __init__(self, minmax: dict[str, tuple[np.float32, np.float32]], spec: HistogramSpec) -> None:
        self.spec, self.minmax = spec, minmax
        self.counts: dict[str, np.ndarray] = {}
        self.edges: dict[str, np.ndarray] = {}

    def _range(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.minmax[name]
        amax = np.array(max(abs(lo), abs(hi)), dtype=np.float32)  # as ORT's collect_value computes it
        return (np.array(0, dtype=np.float32), amax) if self.spec.absolute else (-amax, amax)

    def add(self, name: str, values: np.ndarray) -> None:
        flat = values.reshape(-1)
        if self.spec.absolute:
            flat = np.abs(flat)
        hist, edges = np.histogram(flat, self.spec.bins, range=self._range(name))
        if name in self.counts:
            self.counts[name] += hist
        else:
            self.counts[name], self.edges[name] = hist, edges.astype(np.float32)

    def ort_layout(self) -> dict[str, tuple[Any, ...]]:
        """``{tensor: (hist, edges, min, max[, threshold])}`` as ORT's collectors leave them."""
        out: dict[str, tuple[Any, ...]] = {}
        for name, hist in self.counts.items():
            lo, hi = self.minmax[name]
            out[name] = (hist, self.edges[name], lo, hi)
            if not self.spec.absolute:
                out[name] += (self._range(name)[1],)
        return out


def _min_max(model: Path, data: CalibrationSet, input_name: str, batch: int, static_batch: int | None,
             op_types: Sequence[str], workdir: Path, symmetric: bool, meter: PassMeter) -> Any:
    """ORT's MinMax calibrator, one batch per ``collect_data`` call (it merges the range after each)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with quiet_ort():
        calibrator = create_calibrator(model, list(op_types), augmented_model_path=str(workdir / "minmax.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax,
                                       extra_options={"symmetric": symmetric})
    for feed, real in _feeds(data, input_name, batch, static_batch):
        calibrator.collect_data(_OneBatch(feed))
        meter.advance(real)
    with quiet_ort():
        return calibrator.compute_data()


def _histogram_ranges(model: Path, data: CalibrationSet, input_name: str, batch: int, static_batch: int | None,
                      op_types: Sequence[str], workdir: Path, method: str, minmax: Any, meter: PassMeter) -> Any:
    """Pass 2: fixed-range histograms of the tensors ORT calibrates, then the method's thresholds."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod, HistogramCollector, TensorData, TensorsData, create_calibrator,
    )

    spec = histogram_spec(method)
    assert spec is not None
    ort_method = getattr(CalibrationMethod, ORT_METHOD[method])
    options = {"symmetric": True, "num_bins": spec.bins, "percentile": PERCENTILE,
               "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
    with quiet_ort():  # ORT's augmented graph: every tensor it calibrates becomes an output
        calibrator = create_calibrator(model, list(op_types), augmented_model_path=str(workdir / "histogram.onnx"),
                                       calibrate_method=ort_method, extra_options=options)
    names = sorted(calibrator.tensors_to_calibrate)
    bounds = {n: tuple(np.float32(np.asarray(v).reshape(-1)[0]) for v in minmax[n].range_value) for n in names}
    histograms = FixedRangeHistograms(bounds, spec)  # type: ignore[arg-type]
    fed = static_batch or batch
    for feed, real in _feeds(data, input_name, batch, static_batch):
        for name, values in zip(names, calibrator.infer_session.run(names, feed)):
            histograms.add(name, _real_rows(values, real, fed))
        meter.advance(real)
    if method == "mse":
        ranges = {}
        for name, (hist, edges, *_rest) in histograms.ort_layout().items():
            t = np.float32(mse_threshold(hist, edges.astype(np.float64)))
            ranges[name] = TensorData(lowest=np.array(-t, np.float32), highest=np.array(t, np.float32))
        return TensorsData(ort_method, ranges)
    calibrator.collector = HistogramCollector(method=method, symmetric=True, num_bins=spec.bins,
                                              num_quantized_bins=ENTROPY_QUANTIZED_BINS, percentile=PERCENTILE,
                                              scenario="same")
    calibrator.collector.histogram_dict = histograms.ort_layout()
    with quiet_ort():
        return calibrator.compute_data()


def calibrate_ranges(
    model: Path,
    data: CalibrationSet,
    *,
    method: str,
    input_name: str,
    batch: int,
    static_batch: int | None,
    op_types: Sequence[str],
    workdir: Path,
    progress: ProgressCallback | None = None,
) -> Calibration:
    """Per-tensor symmetric ranges of ``method`` over ``data``, streamed in batches of ``batch`` images
    (``static_batch`` for a fixed-batch graph). ``progress`` is called after every batch."""
    start = time.perf_counter()
    passes = 1 if histogram_spec(method) is None else 2
    meter = PassMeter("ranges", 1, passes, len(data), progress)
    minmax = _min_max(model, data, input_name, batch, static_batch, op_types, workdir, passes == 1, meter)
    ranges = minmax
    if passes == 2:
        meter = PassMeter("histograms", 2, passes, len(data), progress)
        ranges = _histogram_ranges(model, data, input_name, batch, static_batch, op_types, workdir, method, minmax,
                                   meter)
    return Calibration(ranges=ranges, images=meter.done, passes=passes, seconds=time.perf_counter() - start)
