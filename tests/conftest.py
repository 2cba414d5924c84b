"""Shared fixtures: small image datasets written to temporary folders."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_colour_folder(root: Path, per_class: int = 20, size: int = 32, seed: int = 0) -> Path:
    """An image folder of three easy classes (noisy red, green, blue images): learnable in seconds."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("blue", "green", "red")):  # sorted names = class indices
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 90, size=(size, size, 3))
            img[..., 2 - c] += 140  # blue, green, red channel raised
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    """A fresh three-class image folder (60 PNGs, 32x32) that a test may modify."""
    return write_colour_folder(tmp_path / "colours")


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set (40 images, seed 0) written once per session; do not modify it."""
    from psvit.data.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synthetic") / "data", count=40, seed=0)


@pytest.fixture
def write_image(tmp_path: Path) -> Callable[..., Path]:
    """Write a PIL image of ``mode`` and ``size`` filled with ``colour`` to ``tmp_path / name``."""

    def _write(name: str, mode: str = "RGB", size: tuple[int, int] = (32, 32), colour: object = 0) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, colour).save(path)
        return path

    return _write


@pytest.fixture(scope="session")
def demo_fp32_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled demo model exported to FP32 ONNX once per session; do not modify it."""
    from psvit.export import export_onnx

    path = tmp_path_factory.mktemp("demo-onnx") / "demo_fp32.onnx"
    export_onnx("demo", path, count=2)
    return path


CORRUPT_FILES = ("00_circle/zz_text.png", "03_cross/zz_cut.png", "07_checker/zz_empty.jpg")


@pytest.fixture(scope="session")
def predict_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """257 synthetic images (seed 3) plus the unreadable ``CORRUPT_FILES``, written once; do not modify it."""
    from psvit.data.synthetic import write_synthetic

    root = write_synthetic(tmp_path_factory.mktemp("predict") / "images", count=257, seed=3)
    (root / CORRUPT_FILES[0]).write_text("not an image")
    (root / CORRUPT_FILES[1]).write_bytes((root / "03_cross" / "00003.png").read_bytes()[:120])  # truncated
    (root / CORRUPT_FILES[2]).write_bytes(b"")
    return root
