"""PSViT (token Pooling and attention Sharing ViT) and its deployment toolchain."""
from __future__ import annotations

from . import variants as _variants  # noqa: F401  (registers the named variants)
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint, warm_start
from .config import PSViTConfig
from .errors import CheckpointError, ConfigError, DataError, MissingDependencyError, PSViTError, UnknownVariantError
from .model import PSViT
from .registry import create_model, get_config, list_models, register_variant
from .stats import ModelStats, model_stats

__version__ = "0.1.0"

__all__ = [
    "PSViT", "PSViTConfig", "create_model", "get_config", "list_models", "register_variant",
    "PSViTError", "ConfigError", "CheckpointError", "DataError", "MissingDependencyError",
    "UnknownVariantError", "Checkpoint", "load_checkpoint", "save_checkpoint", "warm_start", "ModelStats",
    "model_stats", "__version__",
]
