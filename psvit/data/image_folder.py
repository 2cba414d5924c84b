"""Image folders: one subfolder per class (sorted names = class indices), images found recursively."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..preprocessing import Preprocess, load_image
from ..provenance import sha256_file
from . import LabeledImages

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # GIF: its first frame
FINGERPRINT_OF = "sha256 of the relative paths and the sha256 of the bytes of the files used"


@dataclass(frozen=True)
class FolderIndex:
    """The image files of a folder (relative to ``root``), their labels and the class names."""

    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]


def _visible(name: str) -> bool:
    """False for hidden files and folders (``.ipynb_checkpoints``, ``.git``, ``.DS_Store``...)."""
    return not name.startswith(".")


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive, by extension, case-insensitive, hidden ones left out), sorted.

    Symbolic links to folders are followed, as torchvision's ``ImageFolder`` does, with two guards it lacks:
    a link to ``folder`` itself or to a folder above it is not followed (it would loop, or pull in the
    other classes), and each real folder is read once (so any other cycle ends). A link to a missing file
    is listed like any file: reading it fails and the caller reports it, instead of it vanishing.
    """
    top = os.path.realpath(folder)
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # reached again through a link: a cycle or a duplicate
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if _visible(d) and not _is_above(os.path.join(dirpath, d), top)]
        found.extend(Path(dirpath) / f for f in filenames
                     if _visible(f) and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(found)


def _is_above(path: str, top: str) -> bool:
    """Whether ``path`` resolves to ``top`` or to a folder that contains it."""
    real = os.path.realpath(path)
    return top == real or top.startswith(real.rstrip(os.sep) + os.sep)


def scan_image_folder(root: str | os.PathLike) -> FolderIndex:
    """List the class subfolders and their image files (see :func:`list_image_files`), sorted."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist; pass an image folder or --data synthetic")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass a folder with one subfolder per class")
    entries = sorted(p for p in root.iterdir() if _visible(p.name))
    broken = [p for p in entries if p.is_symlink() and not p.exists()]
    if broken:
        raise DataError(
            f"{broken[0]} is a symbolic link to {os.readlink(broken[0])}, which does not exist; fix or remove it "
            f"(a class folder that cannot be read would silently drop a class)"
        )
    classes = [p.name for p in entries if p.is_dir()]
    if not classes:
        raise DataError(
            f"{root} has no class subfolders; put each class's images in its own subfolder "
            f"(e.g. {root}/cat/1.png, {root}/dog/2.png)"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = list_image_files(root / name)
        files.extend(p.relative_to(root) for p in found)
        labels.extend([label] * len(found))
    if not files:
        raise DataError(
            f"no image files in the class subfolders of {root} (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return FolderIndex(root=root, files=tuple(files), labels=tuple(labels), class_names=tuple(classes))


def combine_digests(digests: Mapping[str, str]) -> str:
    """The fingerprint of ``{relative POSIX path: sha256 of the file's bytes}``: sha256 over the sorted pairs.

    For callers that hash the files while reading them anyway (calibration); :func:`dataset_fingerprint`
    gives the same value for the same files.
    """
    h = hashlib.sha256()
    for rel in sorted(digests):
        h.update(f"{rel}\0{digests[rel]}\n".encode())
    return h.hexdigest()


def dataset_fingerprint(files: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """sha256 over the sorted (relative path, sha256 of the bytes) of ``files``: any changed byte, renamed,
    added or removed file changes it. Every file is read (in chunks), so the cost is that of reading ``files``.

    With ``root``, ``files`` are paths relative to it; without, real paths whose common folder is the root.
    Either way the fingerprint does not depend on where the dataset lives.
    """
    paths = [Path(f) for f in files]
    if root is None:
        paths = [p.resolve() for p in paths]
        base = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path(".")
    else:
        base = Path(root)
    digests: dict[str, str] = {}
    for p in paths:
        full = p if p.is_absolute() or root is None else base / p
        digests[Path(os.path.relpath(full, base)).as_posix()] = sha256_file(full)
    return combine_digests(digests)


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
        "fingerprint_of": FINGERPRINT_OF,
        "img_size": preprocess.img_size,
        "class_counts": dict(zip(index.class_names, np.bincount(labels, minlength=len(index.class_names)).tolist())),
    }
    return LabeledImages(
        pixels=np.stack(pixels),  # (N, C, H, W)
        labels=np.asarray(labels, dtype=np.int64),
        class_names=index.class_names,
        source=source,
    )
