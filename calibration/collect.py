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


@dataclass
class Statistics:
    """What the passes keep of the images: per-tensor (min, max) as ORT's MinMax calibrator merged them, and the
    fixed-range histograms of the histogram methods."""

    minmax: dict[str, tuple[np.ndarray, np.ndarray]]
    histograms: FixedRangeHistograms | None
    images: int


class StreamingCalibrator:
    """ORT's augmented graphs and sessions for one FP32 model and method, built once; :meth:`collect` streams a
    calibration set through them (as often as wanted), :meth:`ranges` turns the statistics into ranges."""

    def __init__(self, model: Path, method: str, *, input_name: str, op_types: Sequence[str], workdir: Path) -> None:
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

        self.method, self.input_name, self.spec = method, input_name, histogram_spec(method)
        with quiet_ort():
            self._minmax = create_calibrator(model, list(op_types), augmented_model_path=str(workdir / "minmax.onnx"),
                                             calibrate_method=CalibrationMethod.MinMax,
                                             extra_options={"symmetric": False})
            self._histogram = None if self.spec is None else create_calibrator(  # every calibrated tensor an output
                model, list(op_types), augmented_model_path=str(workdir / "histogram.onnx"),
                calibrate_method=getattr(CalibrationMethod, ORT_METHOD[method]),
                extra_options={"symmetric": True, "num_bins": self.spec.bins, "percentile": PERCENTILE,
                               "num_quantized_bins": ENTROPY_QUANTIZED_BINS})

    @property
    def passes(self) -> int:
        return 1 if self.spec is None else 2

    def collect(self, data: CalibrationSet, *, batch: int, static_batch: int | None = None,
                progress: ProgressCallback | None = None) -> Statistics:
        """Pass 1: ORT's MinMax calibrator, one batch per ``collect_data`` call (it merges the range after each
        call). Pass 2 (histogram methods): the calibrated tensors of every batch into fixed-range histograms."""
        meter = PassMeter("ranges", 1, self.passes, len(data), progress)
        self._minmax.clear_collected_data()
        self._minmax.calibrate_tensors_range = None  # a fresh run of a reused calibrator
        for feed, real in _feeds(data, self.input_name, batch, static_batch):
            self._minmax.collect_data(_OneBatch(feed))
            meter.advance(real)
        with quiet_ort():
            minmax = {name: td.range_value for name, td in self._minmax.compute_data().items()}
        if self._histogram is None or self.spec is None:
            return Statistics(minmax, None, meter.done)
        meter = PassMeter("histograms", 2, self.passes, len(data), progress)
        names = sorted(self._histogram.tensors_to_calibrate)
        bounds = {n: (np.float32(minmax[n][0].reshape(-1)[0]), np.float32(minmax[n][1].reshape(-1)[0])) for n in names}
        histograms = FixedRangeHistograms(bounds, self.spec)
        fed = static_batch or batch
        for feed, real in _feeds(data, self.input_name, batch, static_batch):
            for name, values in zip(names, self._histogram.infer_session.run(names, feed)):
                histograms.add(name, _real_rows(values, real, fed))
            meter.advance(real)
        return Statistics(minmax, histograms, meter.done)

    def ranges(self, stats: Statistics) -> Any:
        """ORT ``TensorsData`` of symmetric per-tensor ranges: ±max|x| (max), ORT's percentile or entropy
        threshold search, or :func:`.methods.mse_threshold`."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, TensorData, TensorsData

        if self._histogram is None or stats.histograms is None or self.spec is None:
            amax = {n: np.maximum(np.abs(lo), np.abs(hi)) for n, (lo, hi) in stats.minmax.items()}  # as ORT does
            return TensorsData(CalibrationMethod.MinMax, {n: (-a, a) for n, a in amax.items()})
        layout = stats.histograms.ort_layout()
        if self.method == "mse":
            ranges = {}
            for name, (hist, edges, *_rest) in layout.items():
                t = np.float32(mse_threshold(hist, edges.astype(np.float64)))
                ranges[name] = TensorData(lowest=np.array(-t, np.float32), highest=np.array(t, np.float32))
            return TensorsData(CalibrationMethod.Percentile, ranges)
        self._histogram.collector = HistogramCollector(method=self.method, symmetric=True, num_bins=self.spec.bins,
                                                       num_quantized_bins=ENTROPY_QUANTIZED_BINS,
                                                       percentile=PERCENTILE, scenario="same")
        self._histogram.collector.histogram_dict = layout
        with quiet_ort():
            return self._histogram.compute_data()


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
    calibrator = StreamingCalibrator(model, method, input_name=input_name, op_types=op_types, workdir=workdir)
    stats = calibrator.collect(data, batch=batch, static_batch=static_batch, progress=progress)
    return Calibration(ranges=calibrator.ranges(stats), images=stats.images, passes=calibrator.passes,
                       seconds=time.perf_counter() - start)
