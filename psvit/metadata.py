"""Provenance metadata of ONNX artifacts as stored (``psvit.*`` keys, JSON values), read without onnx:
the export writes it (``psvit.export.metadata``), the runtime and the CLI read it."""
from __future__ import annotations

import json
from typing import Any

PREFIX = "psvit."


def decode_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """``psvit.*`` values parsed from JSON where they are JSON; other keys as they are."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if key.startswith(PREFIX):
            try:
                out[key] = json.loads(value)
                continue
            except (json.JSONDecodeError, TypeError):
                pass
        out[key] = value
    return out
