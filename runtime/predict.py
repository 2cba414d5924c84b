"""Images in, labels out: coerce paths/PIL images/arrays, preprocess as the artifact records, top-k."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from ..preprocessing import Preprocess, load_image
from .errors import RuntimeInputError

ImageInput = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray (HWC uint8)


@dataclass(frozen=True)
class Prediction:
    """One class of an image's top-k."""

    index: int
    name: str
    probability: float


def as_image_list(images: ImageInput | Sequence[ImageInput]) -> list[Any]:
    """One image or a sequence of them -> a list of PIL images / uint8 arrays (files are read)."""
    from PIL import Image

    takes = "predict() takes an image path, a PIL image or a uint8 (H, W, C) array, or a list of them"
    if isinstance(images, np.ndarray):
        if images.ndim in (2, 3):  # (H, W) or (H, W, C): one image
            images = [images]
        elif images.ndim == 4:
            images = list(images)  # (B, H, W, C) uint8
        else:
            raise DataError(f"{takes}; got an array of shape {images.shape}")
    elif isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    elif isinstance(images, (bytes, bytearray)) or not isinstance(images, Sequence):
        raise DataError(f"{takes}; got {type(images).__name__}")
    out = []
    for im in images:
        if isinstance(im, (str, os.PathLike)):
            out.append(load_image(im))
        elif isinstance(im, (Image.Image, np.ndarray)):
            out.append(im)
        else:
            raise DataError(f"{takes}; got a list holding a value of type {type(im).__name__}")
    return out


def preprocessor(recorded: dict[str, Any] | None, input_shape: tuple[int, ...]) -> Preprocess:
    """The artifact's recorded preprocessing; refuses artifacts that record none."""
    if not recorded:
        raise RuntimeInputError(
            "this artifact records no preprocessing (psvit.preprocess), so predict() cannot prepare images; "
            "preprocess them yourself with psvit.preprocessing.Preprocess and call infer()"
        )
    pre = Preprocess.from_dict(dict(recorded))
    if pre.img_size != input_shape[-1]:
        raise RuntimeInputError(f"recorded preprocessing crops {pre.img_size} px but the model takes {input_shape}; "
                                f"re-export the artifact so its metadata matches, or preprocess the images "
                                f"yourself and call infer()")
    return pre


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def check_topk(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RuntimeInputError(f"topk must be an integer >= 1, got {k!r}")


def top_k(logits: np.ndarray, k: int, class_names: Sequence[str] | None) -> list[list[Prediction]]:
    """Per row, the ``k`` most probable classes (softmax), most probable first."""
    check_topk(k)
    probs = softmax(logits)
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    names = list(class_names) if class_names else None
    return [[Prediction(int(i), names[i] if names else str(int(i)), float(p[i])) for i in row]
            for row, p in zip(order, probs)]
