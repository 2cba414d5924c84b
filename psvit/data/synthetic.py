"""A procedural image-classification set: ten shapes and textures among clutter, generated from a seed.

Each image has one shape or textured patch of random size, position, colour and contrast (upright within
+-20 degrees), distractor strokes, arcs and blobs under and over it, a gradient background and pixel noise.
Image ``i`` depends only on ``(seed, i, size)`` (its own random stream), so any subset can be regenerated
without the rest, and the same arguments give the same pixels (for the same numpy and Pillow; the
generator version is recorded). Labels are ``i % 10``, so classes are balanced. A horizontal flip never
changes the class. numpy and PIL only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError
from ..preprocessing import Preprocess
from . import LabeledImages, split_indices

GENERATOR = "psvit-synthetic"
GENERATOR_VERSION = 1
CLASSES = (
    "circle", "square", "triangle", "cross", "ring", "star", "stripes", "checker", "dots", "crescent",
)
NUM_CLASSES = len(CLASSES)
MANIFEST = "dataset.json"
MAX_ROTATION = np.pi / 9  # radians either way: shapes keep their orientation, roughly


def class_folder_names() -> list[str]:
    """Folder of each class: ``"00_circle"``, ... (sorted folder names = class indices)."""
    return [f"{i:02d}_{name}" for i, name in enumerate(CLASSES)]


def label_of(index: int) -> int:
    return index % NUM_CLASSES


# ---- drawing -------------------------------------------------------------------------------------
def _polygon(cx: float, cy: float, radii: np.ndarray, angles: np.ndarray, rot: float) -> list[tuple[float, float]]:
    a = angles + rot
    return list(zip((cx + radii * np.cos(a)).tolist(), (cy + radii * np.sin(a)).tolist()))


def _regular(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    return _polygon(cx, cy, np.full(n, r), np.arange(n) * (2 * np.pi / n), rot)


def _shape_mask(
    label: int, s: int, cx: float, cy: float, r: float, rot: float, rng: np.random.Generator
) -> np.ndarray:
    """Coverage in [0, 1] of class ``label`` drawn at full resolution ``s`` x ``s``."""
    name = CLASSES[label]
    if name in ("stripes", "checker", "dots"):
        return _texture_mask(name, s, cx, cy, r, rot, rng)
    img = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(img)
    if name == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif name == "square":
        d.polygon(_regular(cx, cy, r * 0.9, 4, rot + np.pi / 4), fill=255)  # sides level at rot 0
    elif name == "triangle":
        d.polygon(_regular(cx, cy, r * 1.05, 3, rot - np.pi / 2), fill=255)  # apex up at rot 0
    elif name == "cross":
        arm = r * rng.uniform(0.28, 0.4)
        for angle in (rot, rot + np.pi / 2):
            # A bar of half-length r and half-width arm, rotated by angle.
            ca, sa = np.cos(angle), np.sin(angle)
            corners = [(-r, -arm), (r, -arm), (r, arm), (-r, arm)]
            d.polygon([(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in corners], fill=255)
    elif name == "ring":
        inner = r * rng.uniform(0.5, 0.68)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        d.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif name == "star":
        radii = np.where(np.arange(10) % 2 == 0, r * 1.1, r * rng.uniform(0.38, 0.5))
        d.polygon(_polygon(cx, cy, radii, np.arange(10) * (np.pi / 5), rot - np.pi / 2), fill=255)
    elif name == "crescent":
        off = r * rng.uniform(0.45, 0.65)
        towards = rng.uniform(0, 2 * np.pi)  # the bite may face any way
        ox, oy = cx + off * np.cos(towards), cy + off * np.sin(towards)
        cut = r * rng.uniform(0.8, 0.95)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        d.ellipse((ox - cut, oy - cut, ox + cut, oy + cut), fill=0)
    return np.asarray(img, dtype=np.float32) / 255.0


def _texture_mask(
    name: str, s: int, cx: float, cy: float, r: float, rot: float, rng: np.random.Generator
) -> np.ndarray:
    """A disc or square patch of radius ~r filled with stripes, a checkerboard or a dot lattice."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5  # (s, s) each
    x, y = xx - cx, yy - cy
    u = x * np.cos(rot) + y * np.sin(rot)  # rotated coordinates
    v = -x * np.sin(rot) + y * np.cos(rot)
    if rng.random() < 0.5:
        patch = (x * x + y * y) <= (r * 1.1) ** 2
    else:
        patch = (np.abs(u) <= r) & (np.abs(v) <= r)
    period = r * rng.uniform(0.45, 0.62)
    if name == "stripes":
        fill = np.mod(u / period, 1.0) < 0.5
    elif name == "checker":
        fill = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    else:  # dots: a square lattice of discs
        du = np.mod(u / period, 1.0) - 0.5
        dv = np.mod(v / period, 1.0) - 0.5
        fill = du * du + dv * dv <= 0.3**2
    return (patch & fill).astype(np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=3).astype(np.float32)


def _luminance(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _contrasting_colour(rng: np.random.Generator, bg: np.ndarray, min_diff: float) -> np.ndarray:
    """A colour whose luminance differs from ``bg``'s by at least ``min_diff`` (bounded retries)."""
    lum = _luminance(bg)
    for _ in range(32):
        c = _random_colour(rng)
        if abs(_luminance(c) - lum) >= min_diff:
            return c
    return np.full(3, 0.0 if lum > 0.5 else 1.0, dtype=np.float32)


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """(s, s, 3) base colour plus a linear gradient."""
    base = _random_colour(rng)
    other = _random_colour(rng)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    angle = rng.uniform(0, 2 * np.pi)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0.0, 0.6)  # (s, s)
    return base[None, None, :] * (1 - t[..., None]) + other[None, None, :] * t[..., None]


def _clutter(rng: np.random.Generator, s: int, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``n`` distractors (thin strokes, arcs and small blobs): (coverage (s, s), colour) each."""
    for _ in range(n):
        img = Image.new("L", (s, s), 0)
        d = ImageDraw.Draw(img)
        kind = rng.integers(0, 3)
        width = max(1, int(s * rng.uniform(0.02, 0.06)))
        if kind == 0:
            pts = rng.uniform(0, s, size=(int(rng.integers(2, 4)), 2))
            d.line([tuple(p) for p in pts.tolist()], fill=255, width=width)
        elif kind == 1:
            c = rng.uniform(0, s, size=2)
            rr = s * rng.uniform(0.1, 0.3)
            start = float(rng.uniform(0, 360))
            d.arc((c[0] - rr, c[1] - rr, c[0] + rr, c[1] + rr), start, start + float(rng.uniform(60, 200)),
                  fill=255, width=width)
        else:
            c = rng.uniform(0, s, size=2)
            rx, ry = s * rng.uniform(0.03, 0.09, size=2)
            d.ellipse((c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry), fill=255)
        yield np.asarray(img, dtype=np.float32) / 255.0, _random_colour(rng)


def _composite(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return canvas * (1 - mask[..., None]) + colour[None, None, :] * mask[..., None]


def _supersample(size: int) -> int:
    return 4 if size <= 64 else 2


def generate_image(seed: int, index: int, size: int = 32) -> tuple[np.ndarray, int]:
    """Image ``index`` of the set with ``seed``: (size, size, 3) uint8 and its label."""
    if size < 8:
        raise DataError(f"synthetic images need size >= 8 pixels, got {size}")
    label = label_of(index)
    rng = np.random.default_rng([GENERATOR_VERSION, int(seed), int(index)])
    s = size * _supersample(size)
    canvas = _background(rng, s)  # (s, s, 3)
    bg_mean = canvas.mean(axis=(0, 1))
    n_clutter = int(rng.integers(1, 6))
    n_under = int(rng.integers(0, n_clutter + 1))
    for mask, colour in _clutter(rng, s, n_under):  # distractors under the shape
        canvas = _composite(canvas, mask * rng.uniform(0.5, 1.0), colour)
    r = s * rng.uniform(0.2, 0.36)
    margin = r * 0.8
    cx, cy = rng.uniform(margin, s - margin, size=2)
    rot = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    fg = _contrasting_colour(rng, bg_mean, min_diff=float(rng.uniform(0.12, 0.4)))
    canvas = _composite(canvas, _shape_mask(label, s, cx, cy, r, rot, rng), fg)
    for mask, colour in _clutter(rng, s, n_clutter - n_under):  # distractors drawn over the shape
        canvas = _composite(canvas, mask * rng.uniform(0.5, 1.0), colour)
    small = Image.fromarray((np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8))
    small = small.resize((size, size), Image.Resampling.BOX)
    noise = rng.normal(0.0, rng.uniform(0.0, 12.0), size=(size, size, 3))
    out = np.clip(np.asarray(small, dtype=np.float64) + noise, 0, 255) + 0.5
    return out.astype(np.uint8), label


@dataclass(frozen=True)
class SyntheticData:
    """An in-memory synthetic set: ``images`` (N, size, size, 3) uint8, ``labels`` (N,) int64."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    seed: int
    size: int
    class_names: tuple[str, ...] = CLASSES

    def fingerprint(self) -> str:
        """sha256 over the pixels and labels (identical for an identical set)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(self.labels.astype(np.int64).tobytes())
        return h.hexdigest()


def generate_synthetic(
    count: int, seed: int, size: int = 32, indices: Iterable[int] | None = None
) -> SyntheticData:
    """Generate images ``0..count-1`` (or only ``indices``) in memory."""
    if count < 1:
        raise DataError(f"--count must be at least 1, got {count}")
    idx = np.arange(count) if indices is None else np.asarray(list(indices), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= count):
        raise DataError(f"indices must lie in 0..{count - 1}")
    images = np.zeros((len(idx), size, size, 3), dtype=np.uint8)
    labels = np.zeros(len(idx), dtype=np.int64)
    for j, i in enumerate(idx.tolist()):
        images[j], labels[j] = generate_image(seed, i, size)
    return SyntheticData(images=images, labels=labels, indices=idx, seed=seed, size=size)


def load_synthetic(
    count: int, seed: int, preprocess: Preprocess, size: int | None = None, indices: Iterable[int] | None = None
) -> LabeledImages:
    """Generate the set in memory (at ``size``, default the model's input size) and preprocess it."""
    data = generate_synthetic(count, seed, size or preprocess.img_size, indices)
    source = {
        "kind": "synthetic", **manifest(seed, count, data.size),
        "fingerprint": data.fingerprint(), "fingerprint_of": "sha256 of the uint8 pixels and labels",
    }
    return LabeledImages(
        pixels=preprocess.batch_uint8(list(data.images)),  # (N, C, H, W)
        labels=data.labels,
        class_names=CLASSES,
        source=source,
    )


def manifest(seed: int, count: int, size: int) -> dict:
    """What ``dataset.json`` records: enough to regenerate the set."""
    return {
        "generator": GENERATOR, "version": GENERATOR_VERSION, "seed": seed, "count": count, "size": size,
        "classes": list(CLASSES), "class_folders": class_folder_names(), "labels": "index % num_classes",
    }


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``, and folders that must never be replaced."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} is not empty; choose an empty or new folder, or pass --force to replace it")
    resolved = out.resolve()
    if overwrite and (resolved == Path(resolved.anchor) or resolved == Path.home().resolve()
                      or Path.cwd().resolve().is_relative_to(resolved)):
        raise DataError(f"refusing to replace {out} (it is the root, your home or contains the current folder)")
    if not out.parent.is_dir():
        raise DataError(f"the parent folder of {out} does not exist; create it first (mkdir -p {out.parent})")


def write_synthetic(
    out_dir: str | os.PathLike,
    count: int,
    seed: int,
    size: int = 32,
    overwrite: bool = False,
    on_image: Callable[[int], None] | None = None,
) -> Path:
    """Write the set as an image folder (``NN_class/index.png``) plus ``dataset.json``.

    Files go to a temporary folder beside ``out_dir`` that is renamed into place at the end, so an
    interrupted run leaves no half dataset. A non-empty ``out_dir`` is replaced only with ``overwrite``.
    ``on_image(i)`` is called after each image is written (progress reporting).
    """
    out = Path(out_dir)
    check_output_folder(out, overwrite)
    if count < 1:
        raise DataError(f"--count must be at least 1, got {count}")
    width = max(5, len(str(count - 1)))
    folders = class_folder_names()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name in folders:
            (tmp / name).mkdir()
        for i in range(count):
            pixels, label = generate_image(seed, i, size)
            Image.fromarray(pixels).save(tmp / folders[label] / f"{i:0{width}d}.png", optimize=False)
            if on_image is not None:
                on_image(i)
        text = json.dumps(manifest(seed, count, size), indent=2, sort_keys=True) + "\n"
        (tmp / MANIFEST).write_text(text, encoding="utf-8")
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace_folder(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``; an existing ``dst`` is renamed away first and deleted afterwards."""
    if dst.is_dir() and any(dst.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / "x")
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if dst.is_dir():
            dst.rmdir()
        os.replace(src, dst)


@dataclass(frozen=True)
class SyntheticSplit:
    """The synthetic training set of a checkpoint and its held-out split, as ``psvit-export train`` made them.

    Training uses one seed for the images, the split and the weights; ``split_seed`` is kept apart so that
    older metadata that recorded them separately still reads right.
    """

    count: int
    seed: int
    size: int
    val_fraction: float
    split_seed: int

    @classmethod
    def from_training_metadata(cls, extra: dict[str, Any]) -> "SyntheticSplit | None":
        """From a checkpoint's ``psvit.extra`` (``Checkpoint.metadata``); None unless trained on synthetic data."""
        data, training = extra.get("data") or {}, extra.get("training") or {}
        if data.get("kind") != "synthetic" or "val_fraction" not in training:
            return None
        seed = int(data["seed"])
        return cls(count=int(data["count"]), seed=seed, size=int(data["size"]),
                   val_fraction=float(training["val_fraction"]),
                   split_seed=int((training.get("recipe") or {}).get("seed", seed)))

    def heldout_indices(self) -> np.ndarray:
        """Indices of the held-out images (sorted), exactly as the training run split them."""
        if self.val_fraction == 0:
            raise DataError(
                "the model was trained on every synthetic image (--val-fraction 0): none is held out; "
                "evaluate on a folder of images it never saw instead"
            )
        labels = np.arange(self.count) % NUM_CLASSES  # the generator's labels (label_of)
        return split_indices(labels, self.val_fraction, self.split_seed)[1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
