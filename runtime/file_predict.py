"""Predictions over image files as a stream: loader workers decode the next batches while this thread infers.

>>> import psvit.runtime as prt
>>> rt = prt.load("model.onnx")
>>> with prt.predict_files(rt, ["photos/", "more/*.jpg"], topk=3) as stream:
...     for r in stream:                    # FileResult, in input order
...         print(r.path, r.error or r.predictions[0].name)
>>> stream.stats.to_dict()                  # images/s and where the time went

An unreadable file gives a result with ``error`` set; it never ends the stream.
"""
from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .core import Runtime
from .errors import RuntimeInputError
from .file_inputs import find_images
from .image_loader import load_batches
from .predict import Prediction, preprocessor

DEFAULT_BATCH = 32


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS has one, else all)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_loader_workers() -> int:
    """Half the usable CPUs (at least 1, at most 8): the other half runs inference."""
    return max(1, min(8, usable_cpus() // 2))


def throughput_options(artifact: str | os.PathLike, options: dict[str, Any]) -> dict[str, Any]:
    """Backend options for a throughput run: ONNX Runtime's intra-op threads sleep between operators
    instead of spin-waiting (unless ``options`` says otherwise), so that they leave the cores to the
    loader workers (or other actors). Measured on 2 cores shared with other jobs
    (benchmarks/predict_throughput.py, 400 px JPEGs, 2 loader workers): spinning off 212 vs 138 images/s
    for the demo model, 12.7 vs 9.4 for psvit_2d_tiny."""
    from .api import artifact_kind

    if artifact_kind(artifact) == "onnxruntime" and "spinning" not in options:
        return {**options, "spinning": False}
    return dict(options)


def check_run_settings(topk: int, batch: int, loader_workers: int | None = None) -> None:
    """Refuse settings that cannot work before any file is read or any model is loaded."""
    if topk < 1:
        raise RuntimeInputError(f"topk must be at least 1, got {topk}")
    if batch < 1:
        raise RuntimeInputError(f"the batch size must be at least 1, got {batch}")
    if loader_workers is not None and loader_workers < 0:
        raise RuntimeInputError(f"the number of loader workers must be 0 or more, got {loader_workers}")


@dataclass(frozen=True)
class FileResult:
    """One image file: its top-k, or the reason it could not be read."""

    path: str
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class PredictStats:
    """Counts and seconds of one stream.

    ``decode_s`` and ``preprocess_s`` are summed over the loader workers (CPU seconds, overlapping with
    inference); ``infer_s`` is this thread's time in the runtime and top-k; ``wait_s`` is its time spent
    waiting for the loader (near 0 when decoding keeps up); ``wall_s`` is from the first request to the
    last result, ``first_result_s`` to the first batch's results (worker or actor start-up included).
    """

    images: int = 0
    failed: int = 0
    batches: int = 0
    decode_s: float = 0.0
    preprocess_s: float = 0.0
    infer_s: float = 0.0
    wait_s: float = 0.0
    wall_s: float = 0.0
    first_result_s: float = 0.0
    first_batch_files: int = 0

    @property
    def files(self) -> int:
        return self.images + self.failed

    @property
    def images_per_s(self) -> float:
        return self.files / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float:
        """Files per second after the first batch: the rate without the start-up."""
        rest = self.wall_s - self.first_result_s
        return (self.files - self.first_batch_files) / rest if rest > 0 and self.batches > 1 else self.images_per_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files": self.files, "images_per_s": self.images_per_s,
                "steady_images_per_s": self.steady_images_per_s}


def predict_batch(runtime: Runtime, items: Sequence[tuple[str, str | None]], pixels: np.ndarray,
                  topk: int) -> list[FileResult]:
    """Results of one batch: ``items`` are (path, error or None); ``pixels`` (B_ok, C, H, W) float32 holds
    the preprocessed images of the items without error, in order."""
    preds = iter(runtime.top_k(runtime.infer(pixels), topk) if len(pixels) else [])
    return [FileResult(p, next(preds)) if err is None else FileResult(p, error=err) for p, err in items]


class ResultStream(ABC):
    """Results of image files, batch by batch: iterate for :class:`FileResult` (or :meth:`batches` for one
    list per batch); ``stats`` fills as they come. Use it as a context manager (or call :meth:`close`) to
    stop its workers when leaving early."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self.stats = PredictStats()
        self.startup_s = 0.0  # set-up inside the stream before its first batch (Ray: the cluster), in seconds
        self._batches: Iterator[list[FileResult]] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self) -> Iterator[list[FileResult]]:
        if self._batches is None:
            self._batches = self._run()
        return self._batches

    def __iter__(self) -> Iterator[FileResult]:
        for results in self.batches():
            yield from results

    @abstractmethod
    def _run(self) -> Iterator[list[FileResult]]:
        """The batches; a generator whose ``finally`` releases the workers."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The runtime's facts (``Runtime.info()``) and, where it applies, the cluster's."""

    def _count(self, results: Sequence[FileResult], start: float) -> None:
        """Count one batch of results; ``start`` is when the stream began (``time.perf_counter()``)."""
        s = self.stats
        s.batches += 1
        s.failed += sum(1 for r in results if not r.ok)
        s.images += sum(1 for r in results if r.ok)
        s.wall_s = time.perf_counter() - start
        if s.batches == 1:
            s.first_result_s, s.first_batch_files = s.wall_s, len(results)

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()  # type: ignore[attr-defined]

    def __enter__(self) -> "ResultStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PredictionStream(ResultStream):
    """Results in input order; loader worker processes decode the next batches while this thread infers."""

    def __init__(self, runtime: Runtime, paths: Sequence[str], *, topk: int = 5, batch: int = DEFAULT_BATCH,
                 loader_workers: int | None = None, loader_timeout_s: float | None = None,
                 close_runtime: bool = False) -> None:
        check_run_settings(topk, batch, loader_workers)
        super().__init__(paths)
        self.runtime = runtime
        self.topk = topk
        self.batch = batch
        self.loader_workers = default_loader_workers() if loader_workers is None else loader_workers
        self.preprocess = preprocessor(runtime.backend.preprocess, runtime.input_shape)
        self.loader_timeout_s = loader_timeout_s
        self.close_runtime = close_runtime

    def _run(self) -> Iterator[list[FileResult]]:
        stats, rt = self.stats, self.runtime
        start = time.perf_counter()
        loaded = load_batches(self.paths, self.preprocess, self.batch, self.loader_workers, self.loader_timeout_s)
        try:
            while True:
                t0 = time.perf_counter()
                b = next(loaded, None)
                stats.wait_s += time.perf_counter() - t0
                if b is None:
                    break
                t1 = time.perf_counter()
                results = predict_batch(rt, b.items, b.pixels, self.topk)
                stats.infer_s += time.perf_counter() - t1
                stats.decode_s += b.decode_s
                stats.preprocess_s += b.preprocess_s
                self._count(results, start)
                yield results
        finally:
            loaded.close()

    def describe(self) -> dict[str, Any]:
        return self.runtime.info()

    def close(self) -> None:
        """Stop the loader workers (and close the runtime if this stream was told to own it)."""
        super().close()
        if self.close_runtime:
            self.runtime.close()


def predict_files(runtime: Runtime, inputs: Sequence[str | os.PathLike], *, topk: int = 5,
                  batch: int = DEFAULT_BATCH, loader_workers: int | None = None,
                  loader_timeout_s: float | None = None, skip: Collection[str] = ()) -> PredictionStream:
    """A :class:`PredictionStream` over the image files of ``inputs`` (files, folders, glob patterns).

    Args:
        runtime: from :func:`psvit.runtime.load`; its recorded preprocessing prepares the images. For
            ONNX Runtime, ``load(path, spinning=False)`` leaves the cores to the loader workers
            (:func:`throughput_options`).
        topk: classes per image, most probable first.
        batch: images per inference call (and per loader task).
        loader_workers: decoding processes; 0 decodes in this thread; None: half the CPUs.
        loader_timeout_s: the longest wait for one batch from the workers (None: no limit).
        skip: paths (as :func:`find_images` spells them) to leave out, e.g. those an earlier run finished.
    """
    paths = find_images(inputs)
    if skip:
        skip = set(skip)
        paths = [p for p in paths if p not in skip]
    return PredictionStream(runtime, paths, topk=topk, batch=batch, loader_workers=loader_workers,
                            loader_timeout_s=loader_timeout_s)

