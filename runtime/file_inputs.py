"""Which image files a prediction run covers: files, folders (recursive) and glob patterns, in a stable order.

The order is the order of the inputs; inside a folder or a glob the files are sorted. A file reached
twice (two overlapping inputs) is kept once, where it first appears. The same inputs give the same list,
which is what lets a resumed run skip exactly the files an earlier run finished.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from ..data.image_folder import IMAGE_EXTENSIONS, list_image_files
from ..errors import DataError

GLOB_CHARACTERS = "*?["


def is_glob(text: str) -> bool:
    return any(c in text for c in GLOB_CHARACTERS)


def find_images(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """The image files named by ``inputs``, as path strings (relative stays relative).

    A file is taken as given, whatever its extension (an unreadable one fails later, per file); a folder
    contributes its image files (:data:`IMAGE_EXTENSIONS`, recursively, hidden ones skipped); a glob
    pattern (``*``, ``?``, ``[...]``; ``**`` crosses folders) contributes the image files among its
    matches, matched folders expanded. A missing path, a pattern that matches nothing, a folder without
    images and an empty result raise :class:`DataError`.
    """
    if not inputs:
        raise DataError("no inputs: pass image files, folders or glob patterns (e.g. 'photos/**/*.jpg')")
    found: list[str] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = os.path.normpath(path)
        if key not in seen:
            seen.add(key)
            found.append(key)

    for item in inputs:
        text = os.fspath(item)
        if os.path.isdir(text):
            for p in _folder_images(Path(text)):
                add(str(p))
        elif os.path.exists(text):
            add(text)
        elif is_glob(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise DataError(f"the pattern {text!r} matches no file; check it (quote it so that the shell "
                                f"does not expand it, e.g. 'photos/**/*.jpg')")
            for m in matches:
                if os.path.isdir(m):
                    for p in list_image_files(m):
                        add(str(p))
                elif Path(m).suffix.lower() in IMAGE_EXTENSIONS:
                    add(m)
        else:
            raise DataError(f"input {text} does not exist; pass image files, folders or glob patterns")
    if not found:
        raise DataError(f"no image files in {', '.join(map(os.fspath, inputs))} (looked for "
                        f"{', '.join(IMAGE_EXTENSIONS)}, recursively)")
    return found


def _folder_images(folder: Path) -> list[Path]:
    files = list_image_files(folder)
    if not files:
        raise DataError(f"folder {folder} holds no image files (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                        f"recursively)")
    return files
