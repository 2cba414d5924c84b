"""The calibration cache: per-tensor ranges (ONNX Runtime's ``TensorsData`` JSON) under a header that
records the method, its parameters, and hashes of the FP32 model and of the calibration data.

Reused when model, data, method and parameters all match; a cache of another model is refused (pass
``force_recalibrate`` to overwrite it); changed data or method means recalibrating and overwriting.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..provenance import atomic_output, package_versions
from .errors import CacheMismatchError, CalibrationError

FORMAT = "psvit-calib-cache/1"
CACHE_SUFFIX = ".calib.json"


@dataclass(frozen=True)
class CacheKey:
    """What a cache must match to be reused."""

    model_sha256: str
    data_fingerprint: str
    images: int
    method: str
    parameters: dict[str, Any]


def default_cache_path(out: str | os.PathLike) -> Path:
    return Path(str(out) + CACHE_SUFFIX)


def read_cache(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"calibration cache {path} is unreadable ({type(exc).__name__}: {exc}); delete it, "
                               f"choose another --cache, or pass --force-recalibrate to overwrite it") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("ranges"), dict):
        raise CalibrationError(f"{path} is not a psvit calibration cache ({FORMAT}); choose another --cache or "
                               f"pass --force-recalibrate to overwrite it")
    return data


def reusable_ranges(path: str | os.PathLike, key: CacheKey, force: bool) -> dict[str, Any] | None:
    """ORT ranges from the cache at ``path`` when it matches ``key``; None when calibration must run.

    Raises :class:`CacheMismatchError` when the cache belongs to another model and ``force`` is False.
    """
    path = Path(path)
    if force or not path.exists():
        return None
    data = read_cache(path)
    if data.get("model_sha256") != key.model_sha256:
        raise CacheMismatchError(
            f"calibration cache {path} was made for another model (sha256 {str(data.get('model_sha256'))[:12]}…, "
            f"this model {key.model_sha256[:12]}…); pass --force-recalibrate to overwrite it or choose another "
            f"--cache"
        )
    recorded = data.get("data") if isinstance(data.get("data"), dict) else {}
    same = (recorded.get("fingerprint") == key.data_fingerprint and recorded.get("images") == key.images
            and data.get("method") == key.method and data.get("parameters") == key.parameters)
    return data["ranges"] if same else None


def write_cache(path: str | os.PathLike, key: CacheKey, ranges: dict[str, Any], data_source: dict[str, Any],
                seconds: float, run: dict[str, Any] | None = None) -> Path:
    """Write the cache atomically (sorted keys: identical ranges give identical bytes).

    ``run``: how the calibration went (seconds per image, passes, batch, peak RSS), recorded under ``run``.
    """
    payload = {
        "format": FORMAT,
        "model_sha256": key.model_sha256,
        "data": {"fingerprint": key.data_fingerprint, "images": key.images, "source": data_source},
        "method": key.method,
        "parameters": key.parameters,
        "calibration_seconds": round(seconds, 3),
        "run": run or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions("onnxruntime", "onnx"),
        "ranges": ranges,
    }
    path = Path(path)
    with atomic_output(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    return path
