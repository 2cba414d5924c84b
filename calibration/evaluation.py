"""Labelled held-out images for the accuracy report: an image folder, or the synthetic held-out split
regenerated from the seed, count and held-out fraction recorded by training."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.synthetic import SyntheticSplit
from ..errors import DataError
from .data import SYNTHETIC

# psvit-export train's defaults for the synthetic set, used when the model does not record its training data
DEFAULT_SPLIT = SyntheticSplit(count=8000, seed=0, size=32, val_fraction=0.2, split_seed=0)


@dataclass
class EvalSet:
    """Preprocessed images (N, C, H, W) float32 with labels (N,)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: dict[str, Any] = field(default_factory=dict)


def synthetic_split(metadata: dict[str, Any], img_size: int) -> tuple[SyntheticSplit, str]:
    """The synthetic training set behind an exported model, and where that fact comes from.

    Read from the training checkpoint named by ``psvit.source`` when its sha256 matches
    ``psvit.source_sha256``; otherwise psvit-export train's defaults (recorded as such), which generate the
    images at the model's input size ``img_size``.
    """
    from ..checkpoint import read_checkpoint_metadata
    from ..provenance import sha256_file

    src = str(metadata.get("psvit.source", ""))
    path = Path(src.removeprefix("checkpoint ").strip()) if src else None
    if path is not None and path.is_file() and sha256_file(path) == metadata.get("psvit.source_sha256"):
        split = SyntheticSplit.from_training_metadata(read_checkpoint_metadata(path).get("psvit.extra", {}))
        if split is not None:
            return split, str(path)
    return dataclasses.replace(DEFAULT_SPLIT, size=img_size), "psvit-export train defaults (the model does not record its training set)"


def load_eval_set(
    spec: str | os.PathLike, *, preprocess: dict[str, Any], metadata: dict[str, Any], count: int | None = None
) -> EvalSet:
    """Held-out images: an image folder (one subfolder per class) or ``"synthetic"``; at most ``count``."""
    from ..preprocessing import Preprocess

    pre = Preprocess.from_dict(preprocess)
    if str(spec) == SYNTHETIC:
        from ..data.synthetic import load_synthetic

        split, origin = synthetic_split(metadata, pre.img_size)
        held = split.heldout_indices()
        if count is not None:
            held = held[np.linspace(0, len(held) - 1, num=min(count, len(held))).round().astype(int)]
        data = load_synthetic(split.count, split.seed, pre, size=split.size, indices=held.tolist())
        source = {"kind": "synthetic held-out", **split.to_dict(), "from": origin, "images": len(data)}
    else:
        from ..data.image_folder import load_image_folder

        data = load_image_folder(spec, pre)
        if count is not None and count < len(data):
            data = data.subset(np.linspace(0, len(data) - 1, num=count).round().astype(int))
        source = {"kind": "image_folder", "path": str(spec), "images": len(data),
                  "skipped": len(data.source.get("skipped", [])), "fingerprint": data.source.get("fingerprint")}
    if len(data) == 0:
        raise DataError(f"--eval-data {spec} holds no images")
    return EvalSet(pre.normalize(data.pixels), np.asarray(data.labels), tuple(data.class_names), source)
