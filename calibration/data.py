"""Calibration images: an image folder (recursive), ``.npy``/``.npz`` arrays, the synthetic set, or an
in-memory array, preprocessed by the model's own :class:`psvit.preprocessing.Preprocess`, with a
fingerprint for the calibration cache. There is no fallback to random data."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import DataError

DEFAULT_COUNT = 256
DEFAULT_BATCH = 16
SYNTHETIC = "synthetic"
SYNTHETIC_CALIB_SEED = 1  # calibration images of the synthetic distribution, not the training images (seed 0)
CalibSpec = Union[str, os.PathLike, np.ndarray]


@dataclass
class CalibrationSet:
    """Preprocessed images (N, C, H, W) float32 and where they came from."""

    images: np.ndarray
    fingerprint: str
    source: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _array_fingerprint(arr: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{arr.dtype}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _spread(n_total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``0..n_total-1`` (class folders sorted by name all get some)."""
    if count >= n_total:
        return list(range(n_total))
    return sorted(set(np.linspace(0, n_total - 1, num=count).round().astype(int).tolist()))


def _from_folder(root: Path, count: int, preprocess: dict[str, Any]) -> CalibrationSet:
    from ..data.image_folder import dataset_fingerprint, list_image_files
    from ..preprocessing import Preprocess, load_image

    files = list_image_files(root)
    if not files:
        raise DataError(f"calibration folder {root} holds no image files (png, jpg, bmp, webp, tif); "
                        f"point --calib-data at a folder of real images")
    pre = Preprocess.from_dict(preprocess)
    images: list[np.ndarray] = []
    used: list[Path] = []
    skipped: list[str] = []
    for i in _spread(len(files), count):
        try:
            images.append(pre(load_image(files[i])))  # (C, H, W)
            used.append(files[i])
        except DataError:
            skipped.append(files[i].relative_to(root).as_posix())
    if not images:
        raise DataError(f"none of the {len(skipped)} image files picked from {root} could be read "
                        f"(first: {skipped[0]}); check that they are valid images")
    return CalibrationSet(
        images=np.stack(images), fingerprint=dataset_fingerprint([f.relative_to(root) for f in used], root),
        source={"kind": "image_folder", "path": str(root), "images": len(images), "skipped": len(skipped),
                "fingerprint_of": "sha256 of the relative paths and sizes of the files used"},
        skipped=skipped,
    )


def _from_array(arr: np.ndarray, count: int, what: str) -> CalibrationSet:
    arr = arr[:count]
    return CalibrationSet(
        images=np.ascontiguousarray(arr, dtype=np.float32), fingerprint=_array_fingerprint(arr),
        source={"kind": "array", "path": what, "images": len(arr), "fingerprint_of": "sha256 of the array bytes"},
    )


def _from_synthetic(count: int, preprocess: dict[str, Any]) -> CalibrationSet:
    from ..data.synthetic import load_synthetic
    from ..preprocessing import Preprocess

    pre = Preprocess.from_dict(preprocess)
    data = load_synthetic(count, SYNTHETIC_CALIB_SEED, pre)
    return CalibrationSet(
        images=pre.normalize(data.pixels), fingerprint=data.source["fingerprint"],
        source={"kind": "synthetic", "seed": SYNTHETIC_CALIB_SEED, "images": len(data),
                "fingerprint_of": data.source["fingerprint_of"]},
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
    """Calibration images for a model taking ``input_shape`` (C, H, W).

    Args:
        spec: image folder, ``.npy``/``.npz`` of preprocessed float images, ``"synthetic"``, or a float32
            array (N, C, H, W) already preprocessed. None is refused (no silent random data).
        preprocess: the model's preprocessing (``psvit.preprocess`` metadata), used for image files.
        count: at most this many images (None: 256).
    """
    count = DEFAULT_COUNT if count is None else count
    if count < 1:
        raise DataError(f"--calib-count must be at least 1, got {count}")
    require_data(spec)
    if isinstance(spec, np.ndarray):
        if spec.ndim != 4 or not np.issubdtype(spec.dtype, np.floating):
            raise DataError(f"calibration arrays must be float (N, C, H, W), already preprocessed; got "
                            f"{spec.dtype} {spec.shape}")
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
            from ..export.inputs import load_array as load

            result = _from_array(load(path), count, str(path))
        else:
            raise DataError(f"--calib-data {path}: use an image folder, a .npy/.npz file or 'synthetic'")
    if len(result) == 0:
        raise DataError(f"--calib-data {spec} holds no images")
    if tuple(result.images.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"calibration images have shape {tuple(result.images.shape[1:])} (C, H, W) but the model takes "
            f"{tuple(input_shape)}; preprocess them for this model (channels first, {input_shape[0]} channels)"
        )
    if not np.isfinite(result.images).all():
        raise DataError("calibration images contain NaN or infinite values; fix the input arrays")
    return result
