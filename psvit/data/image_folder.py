"""Image folders: one subfolder per class (sorted names = class indices), images found recursively."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..preprocessing import Preprocess, load_image
from . import LabeledImages

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class FolderIndex:
    """The image files of a folder (relative to ``root``), their labels and the class names."""

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _visible_path(rel: Path) -> bool:
    """False for hidden files and files inside hidden folders (``.ipynb_checkpoints``, ``.git``...)."""
    return not any(part.startswith(".") for part in rel.parts)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, by extension case-insensitive, hidden files and folders
    skipped), sorted."""
    folder = Path(folder)
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and _visible_path(p.relative_to(folder)) and p.is_file()
    )


def scan_image_folder(root: str | os.PathLike) -> FolderIndex:
    """List the class subfolders and their image files (by extension, case-insensitive), sorted."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass an image folder or --data synthetic")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass a folder with one subfolder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    if not classes:
        raise DataError(
            f"{root} has no class subfolders; put each class's images in its own subfolder "
            f"(e.g. {root}/cat/1.png, {root}/dog/2.png)"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        found = image_files(folder)
        files.extend(p.relative_to(root) for p in found)
        labels.extend([label] * len(found))
    if not files:
        raise DataError(
            f"no image files in the class subfolders of {root} (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return FolderIndex(root=root, files=tuple(files), labels=tuple(labels), class_names=tuple(classes))


def dataset_fingerprint(files: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """sha256 over the sorted (relative path, size in bytes) of ``files``.

    With ``root``, ``files`` are paths relative to it; without, real paths whose common folder is the root.
    Either way the fingerprint does not depend on where the dataset lives.
    """
    paths = [Path(f) for f in files]
    if root is None:
        paths = [p.resolve() for p in paths]
        base = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path(".")
    else:
        base = Path(root)
    pairs = []
    for p in paths:
        full = p if p.is_absolute() or root is None else base / p
        pairs.append((Path(os.path.relpath(full, base)), full))
    h = hashlib.sha256()
    for rel, full in sorted(pairs, key=lambda rp: rp[0].as_posix()):
        h.update(f"{rel.as_posix()}\0{full.stat().st_size}\n".encode())
    return h.hexdigest()


def load_image_folder(root: str | os.PathLike, preprocess: Preprocess) -> LabeledImages:
    """Read every image of an image folder into memory, resized and cropped by ``preprocess``.

    Unreadable image files are skipped; ``source["skipped"]`` lists them (relative paths). The source
    also records the folder, the fingerprint of the files used and the number of images per class.
    """
    index = scan_image_folder(root)
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    used: list[Path] = []
    skipped: list[str] = []
    for rel, label in zip(index.files, index.labels):
        try:
            image = load_image(index.root / rel)
        except DataError:
            skipped.append(rel.as_posix())
            continue
        pixels.append(preprocess.to_uint8(image))  # (C, H, W)
        labels.append(label)
        used.append(rel)
    if not pixels:
        raise DataError(
            f"none of the {len(index.files)} image files in {index.root} could be read "
            f"(first: {skipped[0]}); check that they are valid images"
        )
    source = {
        "kind": "image_folder",
        "path": str(index.root),
        "images": len(used),
        "skipped": skipped,
        "fingerprint": dataset_fingerprint(used, index.root),
        "fingerprint_of": "sha256 of the relative paths and sizes of the files used",
        "img_size": preprocess.img_size,
    }
    return LabeledImages(
        pixels=np.stack(pixels),  # (N, C, H, W)
        labels=np.asarray(labels, dtype=np.int64),
        class_names=index.class_names,
        source=source,
    )
