"""Loader workers: decode and preprocess image files in background processes, batch by batch, in order.

Built on ``torch.utils.data.DataLoader`` (torch is a core dependency): its worker processes, bounded
prefetch (``prefetch_factor`` batches per worker), in-order delivery and detection of dead workers are what
this needs. Batches travel as torch tensors, i.e. through shared memory, not through a pipe. A file that
cannot be read or decoded becomes a failed item of its batch instead of an exception, so one bad file
never stops a run.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from ..preprocessing import Preprocess, load_image

PREFETCH_BATCHES = 2  # per worker: enough to hide a slow file, bounded memory


@dataclass
class LoadedBatch:
    """One batch in input order: ``items`` holds every file as (path, error or None); ``pixels`` holds the
    normalised images of the files without error, in the same order."""

    items: list[tuple[str, str | None]]
    pixels: np.ndarray  # (B_ok, C, H, W) float32
    decode_s: float  # seconds spent reading and decoding files (worker time)
    preprocess_s: float  # seconds spent resizing, cropping and normalising (worker time)


def read_one(path: str, preprocess: Preprocess) -> tuple[np.ndarray | None, str | None, float, float]:
    """(pixels (C, H, W) uint8 or None, error or None, decode seconds, preprocess seconds) of one file.

    Any exception while reading one file is that file's error: in a run over thousands of files PIL
    raises more than the documented types for malformed data (struct.error, IndexError, ...), and a
    corrupt file must not end the run.
    """
    t0 = time.perf_counter()
    try:
        image = load_image(path)
    except Exception as exc:  # noqa: BLE001 - reported per file, see the docstring
        return None, _message(path, exc), time.perf_counter() - t0, 0.0
    t1 = time.perf_counter()
    try:
        pixels = preprocess.to_uint8(image)  # (C, H, W)
    except Exception as exc:  # noqa: BLE001
        return None, _message(path, exc), t1 - t0, time.perf_counter() - t1
    return pixels, None, t1 - t0, time.perf_counter() - t1


def _message(path: str, exc: Exception) -> str:
    text = str(exc)
    return text if path in text else f"{path}: {type(exc).__name__}: {text}"


def collate(preprocess: Preprocess, rows: Sequence[tuple[str, np.ndarray | None, str | None, float, float]]
            ) -> tuple[list[tuple[str, str | None]], np.ndarray, float, float]:
    """Rows ``(path, *read_one(path))`` -> (items, uint8 pixels (B_ok, C, H, W) of the readable files,
    decode seconds, preprocess seconds)."""
    ok = [r[1] for r in rows if r[1] is not None]
    s = preprocess.img_size
    pixels = np.stack(ok) if ok else np.zeros((0, 3, s, s), np.uint8)  # (B_ok, C, H, W)
    return [(r[0], r[2]) for r in rows], pixels, sum(r[3] for r in rows), sum(r[4] for r in rows)


class _Files:
    """A map-style dataset over paths for the DataLoader; picklable (workers may be spawned)."""

    def __init__(self, paths: Sequence[str], preprocess: Preprocess) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray | None, str | None, float, float]:
        return (self.paths[i], *read_one(self.paths[i], self.preprocess))


class _Collate:
    def __init__(self, preprocess: Preprocess) -> None:
        self.preprocess = preprocess

    def __call__(self, rows: list) -> tuple[Any, ...]:
        import torch

        items, pixels, decode_s, preprocess_s = collate(self.preprocess, rows)
        t0 = time.perf_counter()
        x = self.preprocess.normalize(pixels)  # here, in the worker: float32 (B_ok, C, H, W)
        preprocess_s += time.perf_counter() - t0
        return items, torch.from_numpy(x), decode_s, preprocess_s  # a tensor: shared memory between processes


def load_batches(paths: Sequence[str], preprocess: Preprocess, batch: int, workers: int,
                 timeout_s: float | None = None) -> Iterator[LoadedBatch]:
    """Batches of ``batch`` files in the order of ``paths``; ``workers`` processes (0: in this thread).

    ``timeout_s``: the longest wait for one batch from the workers (None: no limit; a read from a network
    file system may legitimately take long); past it :class:`DataError` names the files of that batch.
    """
    if not paths:
        return
    from torch.utils.data import DataLoader

    extra: dict[str, Any] = {"prefetch_factor": PREFETCH_BATCHES} if workers else {}
    if workers and timeout_s:
        extra["timeout"] = timeout_s
    loader = DataLoader(_Files(paths, preprocess), batch_size=batch, shuffle=False, num_workers=workers,
                        collate_fn=_Collate(preprocess), **extra)
    batches = iter(loader)
    done = 0
    try:
        while True:
            try:
                items, pixels, decode_s, preprocess_s = next(batches)
            except StopIteration:
                return
            except RuntimeError as exc:
                if "timed out" not in str(exc):
                    raise
                late = paths[done:done + batch]
                raise DataError(f"the loader workers gave no batch within {timeout_s:g} s (files {late[0]} .. "
                                f"{late[-1]}); a read hangs: check those files or raise the timeout") from exc
            done += len(items)
            yield LoadedBatch(items=items, pixels=pixels.numpy(), decode_s=decode_s, preprocess_s=preprocess_s)
    finally:
        del batches  # stops the worker processes now, also when the consumer stops early
