"""Timing caches keyed by builder flavour, version and GPU: a cache recorded for another key is never loaded.

TensorRT's own cache format carries no key we can read from Python, so the key lives in a small JSON file
next to the cache (``FILE.key.json``). A cache without a key file, or with another key, is left unread:
the build warns and starts a new cache, which then replaces the file. Foreign caches cause hard build
errors on other GPUs (TensorRT #2144); an unused cache only costs build time.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...provenance import atomic_output


def cache_key(flavour: str, version: str, target_key: str) -> str:
    """``tensorrt-10.13.0.35-nvidia-a100-sxm4-80gb-sm80``: what a timing cache is valid for."""
    return f"{flavour.replace('_', '-')}-{version}-{target_key}"


def default_cache_dir() -> Path:
    """``$PSVIT_CACHE_DIR/timing`` or ``$XDG_CACHE_HOME/psvit-deploy/timing`` (default ``~/.cache/...``)."""
    if os.environ.get("PSVIT_CACHE_DIR"):
        return Path(os.environ["PSVIT_CACHE_DIR"]) / "timing"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "psvit-deploy" / "timing"


def default_cache_path(key: str) -> Path:
    """The shared cache file of one key (one per builder version and GPU)."""
    return default_cache_dir() / f"{key}.timing.cache"


def key_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".key.json")


@dataclass
class LoadedCache:
    """A timing cache ready for the builder: ``blob`` None means start a new one (``note`` says why)."""

    path: Path
    key: str
    blob: bytes | None
    note: str


def load_cache(path: str | os.PathLike, key: str) -> LoadedCache:
    """Read the cache at ``path`` if it was recorded for ``key``; otherwise say why it is not loaded."""
    path = Path(path)
    if not path.exists():
        return LoadedCache(path, key, None, f"new timing cache {path}")
    try:
        recorded = json.loads(key_path(path).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded != key:
        why = f"recorded for {recorded}" if recorded else f"no key file {key_path(path).name}"
        return LoadedCache(path, key, None, f"timing cache {path} not loaded ({why}; this build is {key}); "
                                            f"a new cache replaces it")
    return LoadedCache(path, key, path.read_bytes(), f"timing cache {path} loaded")


def save_cache(path: str | os.PathLike, key: str, blob: bytes) -> None:
    """Write the cache, then its key (old key removed first: a cache is never paired with a wrong key)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key_path(path).unlink(missing_ok=True)
    with atomic_output(path, suffix=".cache") as tmp:
        tmp.write_bytes(blob)
    with atomic_output(key_path(path), suffix=".json") as tmp:
        tmp.write_text(json.dumps({"key": key}))
