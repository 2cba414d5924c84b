"""The one image preprocessing of the project: training evaluation, calibration and the runtime all use it.

timm's eval transform, in numpy and PIL only (no torch), so ONNX Runtime paths can use it too: resize the
shorter side to ``int(img_size / crop_pct)`` with the given PIL interpolation, center-crop ``img_size``,
scale to float32 CHW in [0, 1], normalise with ``mean``/``std``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ConfigError, DataError
from .fields import check_fields

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
ImageLike = Union[Image.Image, np.ndarray]


_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as 8-bit RGB; :func:`to_rgb` says how other depths and modes are scaled.

    Alpha is dropped as timm's loader does (``convert("RGB")``); EXIF orientation is not applied.
    A file that is not a readable image, or one whose values cannot be scaled, raises :class:`DataError`
    naming it.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    except Image.DecompressionBombError as exc:  # a readable image, over PIL's safety limit
        raise DataError(f"{path} is too large to decode safely ({exc}); downscale it or split it into tiles") from exc
    except _UNREADABLE as exc:
        raise DataError(
            f"{path} is not a readable image ({type(exc).__name__}: {exc}); remove it or re-save it as PNG/JPEG"
        ) from exc


def decode_image(data: bytes) -> Image.Image:
    """Encoded image bytes (PNG, JPEG, anything PIL reads) as RGB, converted as :func:`load_image` does.

    Bytes that are not a readable image raise :class:`DataError`.
    """
    import io

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(img)
    except _UNREADABLE as exc:
        raise DataError(f"the {len(data)} bytes sent are not a readable image ({type(exc).__name__}: {exc}); "
                        f"send PNG or JPEG file contents") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Scaling of the modes PIL keeps at more than 8 bits (grayscale, replicated to R, G and B):

    * 16-bit (``I;16*``; and ``I`` read from a PNG, which is how older Pillow opens 16-bit PNGs):
      0..65535 -> 0..255, ``round(v / 257)``.
    * 32-bit integer (``I``, e.g. TIFF): values within 0..255 are taken as 8-bit levels, values within
      0..65535 as 16-bit levels (as above); anything else is refused.
    * 32-bit float (``F``, e.g. TIFF): values within 0..1 are intensities (the float convention of
      scikit-image, OpenCV and tifffile): ``round(v * 255)``; values within 0..255 with some above 1 are
      taken as 8-bit levels; negative, larger or non-finite values are refused.

    A refused image raises :class:`DataError` with its value range; convert it to 8- or 16-bit first.
    Every other mode goes through PIL's own conversion (palette transparency via RGBA, as PIL advises).
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):
        levels = _scale(np.asarray(img, dtype=np.float64), 65535.0, "16-bit")
    elif img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)  # (H, W)
        narrow, wide = (1.0, 255.0) if img.mode == "F" else (255.0, 65535.0)
        full = narrow if _within(a, narrow) else wide  # the narrower scale when every value fits it
        levels = _scale(a, full, "float" if img.mode == "F" else "integer")
    else:
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # PIL warns when palette transparency is converted straight to RGB
        return img.convert("RGB")
    return Image.fromarray(levels).convert("RGB")


def _within(a: np.ndarray, full: float) -> bool:
    return a.size == 0 or bool(np.isfinite(a).all() and a.min() >= 0 and a.max() <= full)


def _scale(a: np.ndarray, full: float, kind: str) -> np.ndarray:
    """Grayscale values in ``0..full`` -> uint8 levels ``round(v * 255 / full)``; DataError outside."""
    if not _within(a, full):
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        raise DataError(
            f"a {kind} image with values from {lo:g} to {hi:g} has no known scale (expected 0..1 or 0..255 for "
            f"float, 0..65535 for integer images); convert it to 8- or 16-bit"
        )
    return np.rint(a * (255.0 / full)).astype(np.uint8)


def _as_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        img = to_rgb(image)
    elif isinstance(image, np.ndarray):
        img = _array_as_pil(image)
    else:
        raise DataError(f"expected a PIL image or a uint8 numpy array, got {type(image).__name__}")
    if 0 in img.size:
        raise DataError(f"an image of {img.size[0]}x{img.size[1]} pixels has nothing to classify; drop it")
    return img


def _array_as_pil(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8:
        raise DataError(
            f"image arrays must be uint8 HWC (0..255), got dtype {image.dtype}; convert 0..1 floats with "
            f"(a * 255).round().astype(np.uint8), 0..255 values with np.clip(a, 0, 255).astype(np.uint8)"
        )
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return Image.fromarray(image.reshape(image.shape[0], image.shape[1])).convert("RGB")
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(image[:, :, :3]))
    raise DataError(f"image arrays must be HWC with 1, 3 or 4 channels, got shape {image.shape}")


@dataclass(frozen=True)
class Preprocess:
    """timm-style eval transform of one model: resize shorter side, center-crop, normalise."""

    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        check_fields(self, "preprocessing")
        if self.img_size < 1:
            raise ConfigError(f"img_size must be positive, got {self.img_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"unknown interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"mean and std need 3 values (RGB), got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be positive, got {self.std}")

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any) -> "Preprocess":
        """From a :class:`psvit.PSViTConfig` (its ``preprocess`` dict)."""
        return cls.from_dict(cfg.preprocess)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        if not isinstance(d, dict):
            raise ConfigError(f"preprocessing must be a JSON object (key -> value), got a {type(d).__name__}")
        fields = ("img_size", "mean", "std", "crop_pct", "interpolation")
        unknown = sorted(set(d) - set(fields))
        missing = [f for f in fields[:3] if f not in d]
        if unknown or missing:
            raise ConfigError(
                f"preprocessing dict: unknown keys {unknown}, missing keys {missing}; expected {list(fields)}"
            )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {
            "img_size": self.img_size, "mean": list(self.mean), "std": list(self.std),
            "crop_pct": self.crop_pct, "interpolation": self.interpolation,
        }

    # ---- the transform ---------------------------------------------------------------------------
    @property
    def resize_size(self) -> int:
        """Shorter side after resizing, before the center crop (timm: ``int(img_size / crop_pct)``)."""
        return int(self.img_size / self.crop_pct)

    def resize_crop(self, image: ImageLike) -> Image.Image:
        """Resize the shorter side to :attr:`resize_size`, then center-crop ``img_size`` (RGB)."""
        img = _as_pil(image)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        size = self.resize_size
        if short != size:
            new_long = int(size * long / short)  # torchvision's rule for the longer side
            new_w, new_h = (size, new_long) if w <= h else (new_long, size)
            img = img.resize((new_w, new_h), INTERPOLATIONS[self.interpolation])
        w, h = img.size
        s = self.img_size
        if (w, h) != (s, s):
            top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
            img = img.crop((left, top, left + s, top + s))
        return img

    def to_uint8(self, image: ImageLike) -> np.ndarray:
        """Resized and cropped pixels, (C, H, W) uint8: the compact form datasets keep in memory."""
        hwc = np.asarray(self.resize_crop(image), dtype=np.uint8)  # (H, W, C)
        return np.ascontiguousarray(hwc.transpose(2, 0, 1))  # (C, H, W)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (..., C, H, W) -> float32 ``(x / 255 - mean) / std`` of the same shape."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        x = pixels.astype(np.float32) / np.float32(255.0)
        return (x - mean) / std

    def __call__(self, image: ImageLike) -> np.ndarray:
        """One image -> (C, H, W) float32, normalised."""
        return self.normalize(self.to_uint8(image))

    def batch_uint8(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Images -> (B, C, H, W) uint8, resized and cropped."""
        if len(images) == 0:
            return np.zeros((0, 3, self.img_size, self.img_size), dtype=np.uint8)
        return np.stack([self.to_uint8(im) for im in images])  # (B, C, H, W)

    def batch(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Images (PIL or HWC uint8 arrays) -> (B, C, H, W) float32, normalised."""
        return self.normalize(self.batch_uint8(images))

    def load(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Image files -> (B, C, H, W) float32, normalised; an unreadable file raises DataError."""
        return self.batch([load_image(p) for p in paths])
