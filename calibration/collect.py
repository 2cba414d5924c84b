"""Streaming calibration: each batch is reduced to running statistics and dropped, so memory does not depend
on the number of images, and the ranges do not depend on how the images are split into batches.

- ``max``: ONNX Runtime's MinMax calibrator fed one batch per ``collect_data`` call (the stride-by-stride use
  its maintainers advise, microsoft/onnxruntime#11020); it merges the running min/max exactly.
- ``percentile``/``entropy``/``mse``: two passes through ORT's histogram-calibrator graph (every calibrated
  tensor an output). Pass 1 keeps each tensor's min, max and min |x|; pass 2 sums histograms over exactly the
  range ORT's collectors take from all the data at once — |x| in [min |x|, max |x|] (2048 bins) or x in
  [-max |x|, max |x|] (512 bins, entropy). Thresholds come from ORT's ``HistogramCollector`` (percentile,
  entropy) and from :func:`.methods.mse_threshold` (mse). The result is that of ORT's all-at-once
  computation, bin for bin, for any batching — without keeping the activations of every batch.

Why not ORT's own histogram merging (``HistogramCollector.collect`` per batch): it fixes the bin width from
the first batch and adds bins as the range grows, so the histogram — and the entropy threshold searched on
it — depends on the batching: on the demo model, entropy thresholds moved by a median 3% (up to 40% for
some tensors) against the all-at-once histogram, differently for batches of 1, 4, 16 and 64
(benchmarks/README.md).

A fixed-batch graph gets its batch: a short last batch is filled by repeating images, and only the rows
of real images enter the statistics (repeats cannot change a min or max).
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import CalibrationSet
from .errors import CalibrationError
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


def batch_axes(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], names: Sequence[str],
               feed: dict[str, np.ndarray], input_name: str) -> dict[str, int | None]:
    """Each tensor's batch axis, found by changing the first image only: the axis of the batch's size along
    which only index 0 changes. Layouts differ inside one graph (batch-major (B, N, D), token-major (N, B, D),
    per-head (B, H, N, hd)); None for a tensor that the first image does not change."""
    images = feed[input_name]  # (B, C, H, W), B >= 2
    probe = images.copy()
    probe[0] = images[0] * np.float32(0.5) + np.float32(0.25)  # any other image
    fed = len(images)
    axes: dict[str, int | None] = {}
    for name, a, b in zip(names, run(feed), run({**feed, input_name: probe})):
        changed = a != b
        axes[name] = None
        if not changed.any():
            continue
        for axis in range(a.ndim):
            if a.shape[axis] == fed and not np.take(changed, range(1, fed), axis=axis).any():
                axes[name] = axis
                break
    return axes


def _real_rows(values: np.ndarray, real: int, axis: int | None) -> np.ndarray:
    """The part of an activation that belongs to the ``real`` first images along its batch ``axis``."""
    return values if axis is None else np.take(values, range(real), axis=axis)


class Extremes:
    """Running per-tensor min, max and min |x| (ORT's all-at-once histograms span exactly these)."""

    def __init__(self) -> None:
        self.bounds: dict[str, tuple[np.float32, np.float32, np.float32]] = {}

    def add(self, name: str, values: np.ndarray) -> None:
        if values.size == 0:
            return
        batch = (values.min(), values.max(), np.abs(values).min())
        if not all(np.isfinite(v) for v in batch):
            raise CalibrationError(f"tensor {name} holds NaN or infinite values on the calibration images; check "
                                   f"the FP32 model and the images")
        old = self.bounds.get(name)
        self.bounds[name] = batch if old is None else (min(old[0], batch[0]), max(old[1], batch[1]),
                                                       min(old[2], batch[2]))


class FixedRangeHistograms:
    """Per-tensor histograms over ranges known in advance, summed batch by batch, in the tuple layout of ORT's
    ``HistogramCollector.histogram_dict`` (its threshold searches read them as they are). The ranges are those
    ORT's collectors take from all the data at once — |x| in [min |x|, max |x|] (``collect_absolute_value``)
    or x in [-max |x|, max |x|] (``collect_value``) — so the counts are theirs, bin for bin."""

    def __init__(self, bounds: dict[str, tuple[np.float32, np.float32, np.float32]], spec: HistogramSpec) -> None:
        self.spec, self.bounds = spec, bounds
        self.counts: dict[str, np.ndarray] = {}
        self.edges: dict[str, np.ndarray] = {}

    def _threshold(self, name: str) -> np.ndarray:
        lo, hi, _ = self.bounds[name]
        return np.array(max(abs(lo), abs(hi)), dtype=np.float32)  # as ORT's collect_value computes it

    def _range(self, name: str) -> tuple[Any, Any]:
        if self.spec.absolute:
            return self.bounds[name][2], self._threshold(name)[()]
        threshold = self._threshold(name)
        return -threshold, threshold

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
            lo, hi, _ = self.bounds[name]
            out[name] = (hist, self.edges[name], lo, hi)
            if not self.spec.absolute:
                out[name] += (self._threshold(name),)
        return out


@dataclass
class Statistics:
    """What the passes keep of the images: per-tensor (min, max) — ORT's MinMax calibrator's for ``max`` —
    and the fixed-range histograms of the histogram methods."""

    minmax: dict[str, tuple[Any, Any]]
    histograms: FixedRangeHistograms | None
    images: int


class StreamingCalibrator:
    """ORT's augmented graph and session for one FP32 model and method, built once; :meth:`collect` streams a
    calibration set through it (as often as wanted), :meth:`ranges` turns the statistics into ranges."""

    def __init__(self, model: Path, method: str, *, input_name: str, op_types: Sequence[str], workdir: Path) -> None:
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

        self.method, self.input_name, self.spec = method, input_name, histogram_spec(method)
        self._batch_axes: dict[str, int | None] | None = None  # found on the first padded batch
        if self.spec is None:  # ReduceMin/ReduceMax of every calibrated tensor inside the graph
            kind, options = CalibrationMethod.MinMax, {"symmetric": True}
        else:  # every calibrated tensor a graph output
            kind = getattr(CalibrationMethod, ORT_METHOD[method])
            options = {"symmetric": True, "num_bins": self.spec.bins, "percentile": PERCENTILE,
                       "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
        with quiet_ort():
            self._calibrator = create_calibrator(model, list(op_types), augmented_model_path=str(workdir / "aug.onnx"),
                                                 calibrate_method=kind, extra_options=options)

    @property
    def passes(self) -> int:
        return 1 if self.spec is None else 2

    def collect(self, data: CalibrationSet, *, batch: int, static_batch: int | None = None,
                progress: ProgressCallback | None = None) -> Statistics:
        """``max``: one pass, ORT's MinMax calibrator fed one batch per ``collect_data`` call (it merges the range
        after each). Histogram methods: pass 1 finds each calibrated tensor's extremes, pass 2 fills the
        histograms over them."""
        if self.spec is None:
            meter = PassMeter("ranges", 1, 1, len(data), progress)
            self._calibrator.clear_collected_data()
            self._calibrator.calibrate_tensors_range = None  # a fresh run of a reused calibrator
            for feed, real in _feeds(data, self.input_name, batch, static_batch):
                self._calibrator.collect_data(_OneBatch(feed))
                meter.advance(real)
            with quiet_ort():
                ranges = self._calibrator.compute_data()
            return Statistics({name: td.range_value for name, td in ranges.items()}, None, meter.done)
        extremes = Extremes()
        self._stream(data, batch, static_batch, PassMeter("ranges", 1, 2, len(data), progress), extremes.add)
        histograms = FixedRangeHistograms(extremes.bounds, self.spec)
        meter = PassMeter("histograms", 2, 2, len(data), progress)
        self._stream(data, batch, static_batch, meter, histograms.add)
        minmax = {name: (lo, hi) for name, (lo, hi, _) in extremes.bounds.items()}
        return Statistics(minmax, histograms, meter.done)

    def _stream(self, data: CalibrationSet, batch: int, static_batch: int | None, meter: PassMeter,
                sink: Callable[[str, np.ndarray], None]) -> None:
        """Every calibrated tensor of every batch (of a padded batch: real images only) to ``sink``, then
        dropped."""
        names = sorted(self._calibrator.tensors_to_calibrate)

        def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            return self._calibrator.infer_session.run(names, feed)

        for feed, real in _feeds(data, self.input_name, batch, static_batch):
            if real == len(feed[self.input_name]):
                for name, values in zip(names, run(feed)):
                    sink(name, values)
            else:  # a fixed-batch graph's short last batch: leave the repeated images out
                if self._batch_axes is None:
                    self._batch_axes = batch_axes(run, names, feed, self.input_name)
                for name, values in zip(names, run(feed)):
                    sink(name, _real_rows(values, real, self._batch_axes[name]))
            meter.advance(real)

    def ranges(self, stats: Statistics) -> Any:
        """ORT ``TensorsData`` of symmetric per-tensor ranges: ±max |x| (max, from ORT's calibrator), ORT's
        percentile or entropy threshold search, or :func:`.methods.mse_threshold`."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, TensorData, TensorsData

        if stats.histograms is None or self.spec is None:
            return TensorsData(CalibrationMethod.MinMax, dict(stats.minmax))
        layout = stats.histograms.ort_layout()
        if self.method == "mse":
            ranges = {}
            for name, (hist, edges, *_rest) in layout.items():
                t = np.float32(mse_threshold(hist, edges.astype(np.float64)))
                ranges[name] = TensorData(lowest=np.array(-t, np.float32), highest=np.array(t, np.float32))
            return TensorsData(CalibrationMethod.Percentile, ranges)
        self._calibrator.collector = HistogramCollector(method=self.method, symmetric=True, num_bins=self.spec.bins,
                                                        num_quantized_bins=ENTROPY_QUANTIZED_BINS,
                                                        percentile=PERCENTILE, scenario="same")
        self._calibrator.collector.histogram_dict = layout
        with quiet_ort():
            return self._calibrator.compute_data()


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
