"""Image datasets: the procedural synthetic set and image folders, held in memory as :class:`LabeledImages`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError


@dataclass(frozen=True)
class LabeledImages:
    """A small dataset in memory, already resized and cropped by a :class:`psvit.preprocessing.Preprocess`.

    ``pixels`` is (N, C, H, W) uint8 (normalise per batch with ``Preprocess.normalize``); ``labels`` is
    (N,) int64 class indices into ``class_names``. ``source`` describes where it came from (provenance).
    """

    pixels: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: np.ndarray) -> "LabeledImages":
        return LabeledImages(self.pixels[indices], self.labels[indices], self.class_names, self.source)

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_classes).tolist()

    def class_summary(self) -> str:
        """``"3 classes: blue 20, green 20, red 21"``; classes without images are named again at the end."""
        counts = self.class_counts()
        listed = ", ".join(f"{name} {n}" for name, n in zip(self.class_names, counts))
        empty = [name for name, n in zip(self.class_names, counts) if n == 0]
        warn = f"; no images for {', '.join(empty)} (the model can never learn them)" if empty else ""
        return f"{self.num_classes} classes: {listed}{warn}"


def check_fraction(fraction: float) -> None:
    """Raise ConfigError unless ``0 <= fraction < 1`` (a held-out share; 0: train on every image)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(
            f"the held-out fraction must be between 0 and 1 (0 included: train on every image, with no "
            f"held-out accuracy; 1 excluded), got {fraction}"
        )


def split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: (train indices, held-out indices), each sorted.

    Each class holds out ``round(n_c * fraction)`` of its ``n_c`` images (keeping at least one for
    training). The result depends only on the labels, the fraction and the seed. ``fraction`` 0 holds out
    nothing: every image trains.
    """
    check_fraction(fraction)
    labels = np.asarray(labels)
    if fraction == 0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = min(int(round(len(idx) * fraction)), len(idx) - 1)
        held.append(rng.permutation(idx)[:n_val])
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    if len(val) == 0:
        raise DataError(
            f"{len(labels)} images are too few to hold out {fraction:.0%} per class; add images, raise "
            f"--val-fraction, or train on every image with --val-fraction 0"
        )
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


__all__ = ["LabeledImages", "check_fraction", "split_indices"]
