"""PSViT (token Pooling and attention Sharing ViT) and its deployment toolchain.

The package imports no heavy framework itself: configs, variants and errors load at once, while the model,
checkpoints and model statistics (which need torch) load on first use (PEP 562 ``__getattr__``), so
``import psvit.runtime`` followed by loading an ONNX file or an engine never imports torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from . import variants as _variants  # noqa: F401  (registers the named variants; torch-free)
from .config import PSViTConfig
from .errors import CheckpointError, ConfigError, DataError, MissingDependencyError, PSViTError, UnknownVariantError
from .registry import create_model, get_config, list_models, register_variant

__version__ = "0.1.0"

_LAZY = {  # attribute -> module that defines it (imported on first use: these need torch)
    "PSViT": "model", "Checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint", "warm_start": "checkpoint", "ModelStats": "stats", "model_stats": "stats",
}

__all__ = [
    "PSViT", "PSViTConfig", "create_model", "get_config", "list_models", "register_variant",
    "PSViTError", "ConfigError", "CheckpointError", "DataError", "MissingDependencyError",
    "UnknownVariantError", "Checkpoint", "load_checkpoint", "save_checkpoint", "warm_start", "ModelStats",
    "model_stats", "__version__",
]


def __getattr__(name: str) -> Any:
    """Lazy attributes (``psvit.load_checkpoint``) and submodules (``psvit.checkpoint``)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
