"""Labelled held-out images for the accuracy report: an image folder, or the synthetic held-out split
regenerated from the seed, count and held-out fraction recorded by training. Class folders are matched to
the model's recorded class names (not merely counted), and their labels mapped to the model's indices."""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.synthetic import SyntheticSplit
from ..errors import DataError
from .data import SYNTHETIC

# psvit-export train's defaults for the synthetic set, used when the model does not record its training data
DEFAULT_SPLIT = SyntheticSplit(count=8000, seed=0, size=32, val_fraction=0.2, split_seed=0)


_INDEX_PREFIX = re.compile(r"^\d+[_-]")  # "03_cross" (psvit-export data synthetic) is the class "cross"


@dataclass
class EvalSet:
    """Preprocessed images (N, C, H, W) float32 with labels (N,), indices into the model's ``class_names``."""

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


def model_classes(metadata: dict[str, Any]) -> tuple[list[str] | None, int]:
    """The class names an exported model records (None when it records none) and its number of classes."""
    config = metadata.get("psvit.config")
    names = metadata.get("psvit.class_names")
    names = [str(n) for n in names] if isinstance(names, list) else None
    num = int(config["num_classes"]) if isinstance(config, dict) and "num_classes" in config else len(names or [])
    return names, num


def class_mapping(data_classes: Sequence[str], model_names: Sequence[str] | None, num_classes: int) -> list[int]:
    """The model's class index of each evaluation class, matched by name: equal names, or equal once a
    leading class index (``03_cross``) is dropped from either. A model that records no names needs as many
    classes as it has outputs, taken in order. Anything else raises :class:`DataError` naming the classes."""
    if model_names is None:
        if len(data_classes) != num_classes:
            raise DataError(f"the model has {num_classes} classes but the evaluation data has {len(data_classes)} "
                            f"class folders; evaluate on the model's own classes")
        return list(range(num_classes))
    exact = {name: i for i, name in enumerate(model_names)}
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(model_names):
        loose.setdefault(_INDEX_PREFIX.sub("", name), []).append(i)
    mapping: list[int] = []
    unknown: list[str] = []
    for name in data_classes:
        candidates = [exact[name]] if name in exact else loose.get(_INDEX_PREFIX.sub("", name), [])
        if len(candidates) == 1:
            mapping.append(candidates[0])
        else:
            unknown.append(name)
    if unknown or len(set(mapping)) != len(mapping):
        shown = ", ".join(model_names[:12]) + (", ..." if len(model_names) > 12 else "")
        what = (f"class folders {', '.join(unknown[:8])}{', ...' if len(unknown) > 8 else ''} are not classes of "
                f"the model" if unknown else "two class folders name the same class of the model")
        raise DataError(f"--eval-data: {what} (its classes: {shown}); name the folders after the model's classes")
    return mapping


def load_eval_set(
    spec: str | os.PathLike, *, preprocess: dict[str, Any], metadata: dict[str, Any], count: int | None = None
) -> EvalSet:
    """Held-out images: an image folder (one subfolder per class) or ``"synthetic"``; at most ``count``.

    Labels are mapped to the model's class indices by name (:func:`class_mapping`); a class the model does not
    know is refused before any image is read (folders) or generated (synthetic).
    """
    from ..preprocessing import Preprocess

    pre = Preprocess.from_dict(preprocess)
    model_names, num_classes = model_classes(metadata)
    if str(spec) == SYNTHETIC:
        from ..data.synthetic import CLASSES, load_synthetic

        mapping = class_mapping(CLASSES, model_names, num_classes)
        split, origin = synthetic_split(metadata, pre.img_size)
        held = split.heldout_indices()
        if count is not None:
            held = held[np.linspace(0, len(held) - 1, num=min(count, len(held))).round().astype(int)]
        data = load_synthetic(split.count, split.seed, pre, size=split.size, indices=held.tolist())
        source = {"kind": "synthetic held-out", **split.to_dict(), "from": origin, "images": len(data)}
    else:
        from ..data.image_folder import load_image_folder, scan_image_folder

        mapping = class_mapping(scan_image_folder(spec).class_names, model_names, num_classes)
        data = load_image_folder(spec, pre)
        if count is not None and count < len(data):
            data = data.subset(np.linspace(0, len(data) - 1, num=count).round().astype(int))
        source = {"kind": "image_folder", "path": str(spec), "images": len(data),
                  "skipped": len(data.source.get("skipped", [])), "fingerprint": data.source.get("fingerprint")}
    if len(data) == 0:
        raise DataError(f"--eval-data {spec} holds no images")
    labels = np.asarray(mapping, dtype=np.int64)[np.asarray(data.labels)]  # data's class -> model's class
    names = tuple(model_names) if model_names is not None else tuple(data.class_names)
    source["classes"] = {"matched_by": "name" if model_names is not None else "position (the model records no "
                         "class names)", "present": len(mapping), "model": num_classes}
    return EvalSet(pre.normalize(data.pixels), labels, names, source)
