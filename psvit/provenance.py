"""Provenance helpers shared by every artifact writer: file hashes, versions, atomic writes."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of ``names`` (plus python and psvit-deploy); missing packages are left out."""
    out = {"python": platform.python_version()}
    for name in ("psvit-deploy", *names):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_folder(path: str | os.PathLike) -> Path:
    """Fail early (before minutes of work) when the folder that will hold ``path`` is missing or read-only:
    :class:`psvit.errors.OutputPathError`, whichever stage asks."""
    from .errors import OutputPathError

    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"output folder {parent} does not exist; create it first (mkdir -p {parent})")
    try:  # os.access says yes to root even where the file system refuses, so try it
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise OutputPathError(f"output folder {parent} is not writable (creating a file in it failed: "
                              f"{exc.strerror}); choose a writable location") from exc
    return parent


# Bytes the longest name derived from an output's adds to it: its temporary file (".NAME.xxxxxxxx.onnx") and
# those of its sidecars and external data (".NAME.calib.json.xxxxxxxx.json", NAME.data, NAME.run.json).
DERIVED_NAME_MARGIN = 32


def _through_link(path: Path) -> Path:
    """Where writing ``path`` lands: a symlink's target (links are written through, not replaced)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def output_target(path: str | os.PathLike) -> Path:
    """Where writing the output ``path`` lands, checked up front: a symlink's target (links are written
    through, not replaced), never a device, FIFO or socket (replacing one would destroy it), and a name short
    enough for the files derived from it (:data:`DERIVED_NAME_MARGIN`)."""
    from .errors import OutputPathError

    path = _through_link(Path(path))
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise OutputPathError(f"{path} is a device, FIFO or socket, not a file; writing the output would replace "
                              f"it. Name a regular file")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        limit = os.pathconf(parent, "PC_NAME_MAX") if parent.is_dir() else 255
    except (OSError, ValueError):
        limit = 255
    size = len(os.fsencode(path.name))
    if size + DERIVED_NAME_MARGIN > limit:
        raise OutputPathError(
            f"output name {path.name[:40]}… is {size} bytes long; the files made next to it (temporary files, "
            f"sidecars) add up to {DERIVED_NAME_MARGIN} bytes and the file system allows {limit}: use a name of at "
            f"most {limit - DERIVED_NAME_MARGIN} bytes")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A failure (or Ctrl-C) leaves neither a half-written ``path`` nor the temporary file behind.
    """
    path = _through_link(Path(path))  # as output_target checked
    parent = check_output_folder(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual mode
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_json(path: str | os.PathLike, record: Any) -> Path:
    """``record`` as indented JSON at ``path``, written atomically; serialised first, so a value that JSON
    cannot hold writes nothing (``default=str`` turns paths and enums into text)."""
    text = json.dumps(record, indent=2, default=str) + "\n"
    with atomic_output(path, suffix=".json") as tmp:
        tmp.write_text(text)
    return Path(path)
