"""Calibration images, read batch by batch: an image folder (recursive), a ``.npy`` (memory-mapped) or
``.npz`` of preprocessed images, the synthetic set, or an in-memory array, preprocessed by the model's own
:class:`psvit.preprocessing.Preprocess`.

A :class:`CalibrationSet` knows where its images are but does not hold them: every pass reads them again,
so memory does not grow with the number of images. Its fingerprint (part of the calibration cache key) is
computed without holding them either. An image folder's picked files are each read once up front: a file
that does not decode is skipped (listed in ``skipped``, named in ``notes``), the others' bytes are hashed
into the fingerprint, so the key covers exactly the images calibration uses and every batch is full; a
later pass refuses a file whose bytes changed since. There is no fallback to random data.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:
    from ..preprocessing import Preprocess

# 512 images: NVIDIA's TensorRT guide finds about 500 enough for ImageNet classifiers (guides use 500-1,000),
# and on the demo model the median tensor's range is within 1.5% of its 2,048-image value at 512 images for
# every method, 2-3.5% at 256 (benchmarks/calibration_convergence.py).
DEFAULT_COUNT = 512
DEFAULT_BATCH = 16
SYNTHETIC = "synthetic"
SYNTHETIC_CALIB_SEED = 1  # calibration images of the synthetic distribution, not the training images (seed 0)
_HASH_CHUNK = 64  # images per read while fingerprinting an array
NAMED_SKIPS = 3  # unreadable files named in the note about them
CalibSpec = Union[str, os.PathLike, np.ndarray]
ReadRange = Callable[[int, int], np.ndarray]  # images [start, stop) -> (B, C, H, W) float32


@dataclass
class CalibrationSet:
    """``count`` preprocessed images of shape ``image_shape`` (C, H, W), read on demand.

    ``batches(n)`` yields (B, C, H, W) float32 batches in a fixed order (the last one shorter when ``n``
    does not divide ``count``); ``take(n)`` reads the first ``n`` images. Neither keeps what it read.
    ``skipped``: relative paths of picked files that could not be read; ``notes``: one-line messages for the
    user (the files skipped and why, fewer images found than ``--calib-count`` asked for).
    """

    count: int
    image_shape: tuple[int, int, int]
    fingerprint: str
    read_range: ReadRange = field(repr=False)
    source: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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


def _decode(data: bytes, pre: Preprocess) -> np.ndarray:
    """Encoded image bytes -> (C, H, W) float32 with the model's :class:`~psvit.preprocessing.Preprocess`.

    Bytes PIL cannot decode raise :class:`DataError` (:func:`~psvit.preprocessing.decode_image`); PIL's
    ``DecompressionBombWarning`` is raised too (the file is skipped like an unreadable one), never printed.
    """
    from PIL import Image

    from ..preprocessing import decode_image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return pre(decode_image(data))


def _why(exc: BaseException) -> str:
    """Why a file was skipped, in a few words (PIL's own error where decoding failed)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, DataError) and exc.__cause__ is not None:  # decode_image's wrapper: its cause says why
        exc = exc.__cause__
    if isinstance(exc, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return f"over PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels"
    if isinstance(exc, FileNotFoundError):
        return "missing (a broken link?)"
    if isinstance(exc, DataError):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not an image format PIL recognises"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class _Checked:
    """A picked file that decodes, and the sha256 of the bytes that did."""

    path: Path
    sha256: str


def _check(path: Path, pre: Preprocess) -> _Checked:
    """Read ``path`` once: decode it (raising whatever PIL raises when it cannot) and hash the same bytes."""
    data = path.read_bytes()
    if not data:
        raise DataError("empty file")
    _decode(data, pre)
    return _Checked(path, hashlib.sha256(data).hexdigest())


def _reread(item: _Checked, pre: Preprocess) -> np.ndarray:
    """A checked file's image, read again; DataError when its bytes changed since they were fingerprinted."""
    try:
        data = item.path.read_bytes()
    except OSError as exc:
        raise DataError(f"{item.path} could no longer be read during calibration ({exc}); run again") from exc
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise DataError(f"{item.path} changed during calibration; run again once the images stop changing")
    return _decode(data, pre)


def _skipped_note(why: dict[str, str], picked: int) -> str:
    """One line naming the first few skipped files and why the first was skipped."""
    names = list(why)
    shown = ", ".join(names[:NAMED_SKIPS]) + (f" and {len(names) - NAMED_SKIPS} more" if len(names) > NAMED_SKIPS
                                             else "")
    return (f"skipped {len(names)} of {picked} picked image files that cannot be read: {shown} "
            f"({names[0]}: {why[names[0]]})")


def _shortfall_note(asked: int | None, found: int, used: int, where: str) -> str | None:
    """One line when ``--calib-count`` asked for more images than ``where`` holds."""
    if asked is None or found >= asked:
        return None
    unreadable = f" ({found - used} unreadable)" if used < found else ""
    return f"--calib-count asked for {asked} images, found {found} in {where}{unreadable}: calibrating on {used}"


def _from_folder(root: Path, count: int, preprocess: dict[str, Any], asked: int | None = None) -> CalibrationSet:
    from ..data.image_folder import FINGERPRINT_OF, combine_digests, list_image_files
    from ..preprocessing import Preprocess

    files = list_image_files(root)
    if not files:
        raise DataError(f"calibration folder {root} holds no image files (png, jpg, bmp, webp, tif); "
                        f"point --calib-data at a folder of real images")
    pre = Preprocess.from_dict(preprocess)
    picked = [files[i] for i in _spread(len(files), count)]
    used: list[_Checked] = []
    why: dict[str, str] = {}  # relative path of a skipped file -> why
    for f in picked:
        try:
            used.append(_check(f, pre))
        except Exception as exc:  # noqa: BLE001 - PIL raises more than its documented types for malformed data
            why[f.relative_to(root).as_posix()] = _why(exc)
    skipped = list(why)
    if not used:
        raise DataError(f"none of the {len(skipped)} image files picked from {root} could be read "
                        f"(first: {skipped[0]}: {why[skipped[0]]}); check that they are valid images")

    def read_range(start: int, stop: int) -> np.ndarray:
        return np.stack([_reread(item, pre) for item in used[start:stop]])  # (B, C, H, W)

    notes = [_skipped_note(why, len(picked))] if why else []
    shortfall = _shortfall_note(asked, len(files), len(used), str(root))
    return CalibrationSet(
        count=len(used), image_shape=(3, pre.img_size, pre.img_size), read_range=read_range,
        fingerprint=combine_digests({item.path.relative_to(root).as_posix(): item.sha256 for item in used}),
        source={"kind": "image_folder", "path": str(root), "images": len(used), "skipped": len(skipped),
                "fingerprint_of": FINGERPRINT_OF},
        skipped=skipped, notes=notes + ([shortfall] if shortfall else []),
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


def _from_array(arr: np.ndarray, count: int, what: str, asked: int | None = None) -> CalibrationSet:
    if arr.ndim != 4 or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"calibration arrays must be float (N, C, H, W), already preprocessed; got "
                        f"{arr.dtype} {arr.shape}")
    shortfall = _shortfall_note(asked, len(arr), len(arr), what)
    arr = arr[:count]  # a view: a memory-mapped file stays on disk

    def read_range(start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(arr[start:stop], dtype=np.float32)

    return CalibrationSet(
        count=len(arr), image_shape=(int(arr.shape[1]), int(arr.shape[2]), int(arr.shape[3])), read_range=read_range,
        fingerprint=_array_fingerprint(arr),
        source={"kind": "array", "path": what, "images": len(arr), "fingerprint_of": "sha256 of the float32 array"},
        notes=[shortfall] if shortfall else [],
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
        count: at most this many images (None: :data:`DEFAULT_COUNT`); when a given ``count`` is more than
            the data holds, ``notes`` says how many were found.
    """
    asked, count = count, DEFAULT_COUNT if count is None else count
    if count < 1:
        raise DataError(f"--calib-count must be at least 1, got {count}")
    require_data(spec)
    if isinstance(spec, np.ndarray):
        result = _from_array(spec, count, "<array>", asked)
    elif str(spec) == SYNTHETIC:
        result = _from_synthetic(count, preprocess)
    else:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"--calib-data {path} does not exist; pass an image folder, a .npy/.npz file or "
                            f"'synthetic'")
        if path.is_dir():
            result = _from_folder(path, count, preprocess, asked)
        elif path.suffix in (".npy", ".npz"):
            from ..export.inputs import load_array

            result = _from_array(load_array(path, mmap=True), count, str(path), asked)
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
