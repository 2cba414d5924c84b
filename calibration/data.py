"""Calibration images, read batch by batch: an image folder (recursive), a ``.npy`` (memory-mapped) or
``.npz`` of preprocessed images, the synthetic set, or an in-memory array, preprocessed by the model's own
:class:`psvit.preprocessing.Preprocess`.

A :class:`CalibrationSet` knows where its images are but does not hold them: every pass reads them again,
so memory does not grow with the number of images. Its fingerprint (part of the calibration cache key) is
computed without holding them either. There is no fallback to random data.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import DataError

# 512 images: NVIDIA's TensorRT guide finds about 500 enough for ImageNet classifiers (guides use 500-1,000),
# and on the demo model the median tensor's range is within 1.5% of its 2,048-image value at 512 images for
# every method, 2-3.5% at 256 (benchmarks/calibration_convergence.py).
DEFAULT_COUNT = 512
DEFAULT_BATCH = 16
SYNTHETIC = "synthetic"
SYNTHETIC_CALIB_SEED = 1  # calibration images of the synthetic distribution, not the training images (seed 0)
_HASH_CHUNK = 64  # images per read while fingerprinting an array
CalibSpec = Union[str, os.PathLike, np.ndarray]
ReadRange = Callable[[int, int], np.ndarray]  # images [start, stop) -> (B, C, H, W) float32


@dataclass
class CalibrationSet:
    """``count`` preprocessed images of shape ``image_shape`` (C, H, W), read on demand.

    ``batches(n)`` yields (B, C, H, W) float32 batches in a fixed order (the last one shorter when ``n``
    does not divide ``count``); ``take(n)`` reads the first ``n`` images. Neither keeps what it read.
    """

    count: int
    image_shape: tuple[int, int, int]
    fingerprint: str
    read_range: ReadRange = field(repr=False)
    source: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.count

    def batches(self, batch: int) -> Iterator[np.ndarray]:
        if batch < 1:
            raise DataError(f"the calibration batch must be at least 1, got {batch}")
        for start in range(0, self.count, batch):
            yield self.read_range(start, min(start + batch, self.count))

    def take(self, n: int) -> np.ndarray:
        """The first ``min(n, count)`` images, (N, C, H, W) float32."""
        return self.read_range(0, min(n, self.count))


def _spread(n_total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``0..n_total-1`` (class folders sorted by name all get some)."""
    if count >= n_total:
        return list(range(n_total))
    return sorted(set(np.linspace(0, n_total - 1, num=count).round().astype(int).tolist()))


def _opens_as_image(path: Path) -> bool:
    """True when PIL recognises the file's header (cheap: nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def _from_folder(root: Path, count: int, preprocess: dict[str, Any]) -> CalibrationSet:
    from ..data.image_folder import dataset_fingerprint, list_image_files
    from ..preprocessing import Preprocess, load_image

    files = list_image_files(root)
    if not files:
        raise DataError(f"calibration folder {root} holds no image files (png, jpg, bmp, webp, tif); "
                        f"point --calib-data at a folder of real images")
    pre = Preprocess.from_dict(preprocess)
    picked = [files[i] for i in _spread(len(files), count)]
    readable = {f: _opens_as_image(f) for f in picked}
    used = [f for f in picked if readable[f]]
    skipped = [f.relative_to(root).as_posix() for f in picked if not readable[f]]
    if not used:
        raise DataError(f"none of the {len(skipped)} image files picked from {root} could be read "
                        f"(first: {skipped[0]}); check that they are valid images")

    def read_range(start: int, stop: int) -> np.ndarray:
        return np.stack([pre(load_image(f)) for f in used[start:stop]])  # (B, C, H, W)

    return CalibrationSet(
        count=len(used), image_shape=(3, pre.img_size, pre.img_size), read_range=read_range,
        fingerprint=dataset_fingerprint([f.relative_to(root) for f in used], root),
        source={"kind": "image_folder", "path": str(root), "images": len(used), "skipped": len(skipped),
                "fingerprint_of": "sha256 of the relative paths and sizes of the files used"},
        skipped=skipped,
    )


def _array_fingerprint(arr: np.ndarray) -> str:
    """sha256 of the float32 images (read in chunks, so a memory-mapped file is never loaded whole);
    refuses NaN or infinite values on the way."""
    h = hashlib.sha256()
    h.update(f"float32{tuple(arr.shape)}".encode())
    for start in range(0, len(arr), _HASH_CHUNK):
        chunk = np.ascontiguousarray(arr[start:start + _HASH_CHUNK], dtype=np.float32)
        if not np.isfinite(chunk).all():
            raise DataError("calibration images contain NaN or infinite values; fix the input arrays")
        h.update(chunk.tobytes())
    return h.hexdigest()


def _from_array(arr: np.ndarray, count: int, what: str) -> CalibrationSet:
    if arr.ndim != 4 or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"calibration arrays must be float (N, C, H, W), already preprocessed; got "
                        f"{arr.dtype} {arr.shape}")
    arr = arr[:count]  # a view: a memory-mapped file stays on disk

    def read_range(start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(arr[start:stop], dtype=np.float32)

    return CalibrationSet(
        count=len(arr), image_shape=(int(arr.shape[1]), int(arr.shape[2]), int(arr.shape[3])), read_range=read_range,
        fingerprint=_array_fingerprint(arr),
        source={"kind": "array", "path": what, "images": len(arr), "fingerprint_of": "sha256 of the float32 array"},
    )


def _from_synthetic(count: int, preprocess: dict[str, Any]) -> CalibrationSet:
    from ..data.synthetic import generate_image, manifest
    from ..preprocessing import Preprocess
    from ..provenance import package_versions

    pre = Preprocess.from_dict(preprocess)
    size = pre.img_size

    def read_range(start: int, stop: int) -> np.ndarray:
        pixels = [pre.to_uint8(generate_image(SYNTHETIC_CALIB_SEED, i, size)[0]) for i in range(start, stop)]
        return pre.normalize(np.stack(pixels))  # (B, C, H, W)

    # Image i is a pure function of (generator version, seed, i, size) and the numpy/Pillow that draw it.
    facts = {**manifest(SYNTHETIC_CALIB_SEED, count, size), **package_versions("numpy", "pillow")}
    facts.pop("python", None)
    facts.pop("psvit-deploy", None)
    return CalibrationSet(
        count=count, image_shape=(3, size, size), read_range=read_range,
        fingerprint=hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest(),
        source={"kind": "synthetic", "seed": SYNTHETIC_CALIB_SEED, "images": count, "size": size,
                "fingerprint_of": "sha256 of the generator manifest (version, seed, count, size) and the "
                                  "numpy/Pillow versions that draw the images"},
    )


def require_data(spec: CalibSpec | None) -> None:
    """Refuse a missing ``--calib-data`` before any work is done (no silent fallback to random data)."""
    if spec is None:
        raise DataError("INT8 calibration needs representative images: pass --calib-data with an image folder, "
                        "a .npy/.npz of preprocessed images, or 'synthetic' (random data is never used)")


def load_calibration_set(
    spec: CalibSpec | None,
    *,
    preprocess: dict[str, Any],
    input_shape: tuple[int, int, int],
    count: int | None = None,
) -> CalibrationSet:
    """Calibration images for a model taking ``input_shape`` (C, H, W), checked, not yet read.

    Args:
        spec: image folder, ``.npy`` (memory-mapped) / ``.npz`` (read whole) of preprocessed float images,
            ``"synthetic"``, or a float array (N, C, H, W) already preprocessed. None is refused.
        preprocess: the model's preprocessing (``psvit.preprocess`` metadata), used for image files.
        count: at most this many images (None: :data:`DEFAULT_COUNT`).
    """
    count = DEFAULT_COUNT if count is None else count
    if count < 1:
        raise DataError(f"--calib-count must be at least 1, got {count}")
    require_data(spec)
    if isinstance(spec, np.ndarray):
        result = _from_array(spec, count, "<array>")
    elif str(spec) == SYNTHETIC:
        result = _from_synthetic(count, preprocess)
    else:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"--calib-data {path} does not exist; pass an image folder, a .npy/.npz file or "
                            f"'synthetic'")
        if path.is_dir():
            result = _from_folder(path, count, preprocess)
        elif path.suffix in (".npy", ".npz"):
            from ..export.inputs import load_array

            result = _from_array(load_array(path, mmap=True), count, str(path))
        else:
            raise DataError(f"--calib-data {path}: use an image folder, a .npy/.npz file or 'synthetic'")
    if len(result) == 0:
        raise DataError(f"--calib-data {spec} holds no images")
    if tuple(result.image_shape) != tuple(input_shape):
        raise DataError(
            f"calibration images have shape {tuple(result.image_shape)} (C, H, W) but the model takes "
            f"{tuple(input_shape)}; preprocess them for this model (channels first, {input_shape[0]} channels)"
        )
    return result
