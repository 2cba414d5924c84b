"""Sample inputs for verification, FP16 overflow checks and ``compare``: seeded random images, arrays from
``.npy``/``.npz`` files, or an image folder read with the project's preprocessing."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

DEFAULT_COUNT = 8


def random_images(count: int, input_shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """``count`` standard-normal images (N, C, H, W): the statistics of normalised real images."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *input_shape), dtype=np.float32)


def load_array(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """A float array (N, C, H, W) from ``.npy`` or ``.npz`` (key ``images``, else its only array).

    ``mmap``: memory-map a ``.npy`` instead of reading it and keep its float dtype (the caller converts what
    it reads to float32); a ``.npz`` is always read whole.
    """
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                keys = list(z.keys())
                if "images" in keys:
                    arr = z["images"]
                elif len(keys) == 1:
                    arr = z[keys[0]]
                else:
                    raise DataError(f"{path} holds {keys}; name the input array 'images'")
        else:
            arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable numpy file ({exc})") from exc
    if arr.ndim == 3:
        arr = arr[None]  # one image (C, H, W) -> (1, C, H, W)
    if arr.ndim != 4 or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(
            f"{path} must hold float images (N, C, H, W), already preprocessed; got {arr.dtype} {arr.shape}"
        )
    return arr if mmap else arr.astype(np.float32)


def load_folder_images(root: str | os.PathLike, count: int, preprocess: dict[str, Any]) -> np.ndarray:
    """``count`` images spread evenly over an image folder, preprocessed: a flat folder of images or one
    subfolder per class (images are found recursively; no labels are needed). An unreadable file raises
    DataError naming it."""
    from ..data.image_folder import IMAGE_EXTENSIONS, list_image_files
    from ..preprocessing import Preprocess

    files = list_image_files(root)
    if not files:
        raise DataError(f"--data {root} holds no image files (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                        f"in subfolders too)")
    picks = np.linspace(0, len(files) - 1, num=min(count, len(files))).round().astype(int)
    return Preprocess.from_dict(preprocess).load([files[i] for i in sorted(set(picks.tolist()))])


def sample_inputs(
    data: str | os.PathLike | None,
    *,
    count: int = DEFAULT_COUNT,
    input_shape: tuple[int, ...],
    preprocess: dict[str, Any] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Inputs (N, C, H, W) float32 for a model with ``input_shape`` (C, H, W).

    Args:
        data: None for random images; an image folder (flat or one subfolder per class); or a
            ``.npy``/``.npz`` of preprocessed images.
        count: how many (random images, or at most this many from a folder or file).
        preprocess: the artifact's preprocessing (needed for an image folder).
    """
    if count < 1:
        raise DataError(f"--count must be at least 1, got {count}")
    if data is None:
        return random_images(count, input_shape, seed)
    path = Path(data)
    if not path.exists():
        raise DataError(f"--data {path} does not exist; pass an image folder or a .npy/.npz file")
    if path.is_dir():
        if preprocess is None:
            raise DataError(
                "an image folder needs the preprocessing of the model; neither artifact records it "
                "(pass preprocessed arrays as .npy instead)"
            )
        arr = load_folder_images(path, count, preprocess)
    elif path.suffix in (".npy", ".npz"):
        arr = load_array(path)[:count]
    else:
        raise DataError(f"--data {path}: use an image folder or a .npy/.npz file of preprocessed images")
    if tuple(arr.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"--data {path} gives images of shape {tuple(arr.shape[1:])}, the model expects {tuple(input_shape)}"
        )
    return arr
