"""Named variants: each is a tiny registered function that states only how it differs from the defaults."""
from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from .config import PSViTConfig
from .errors import ConfigError, UnknownVariantError

_VARIANTS: dict[str, Callable[[], PSViTConfig]] = {}
# Keyword arguments of create_model that choose how the model is built, not what it is.
MODEL_OPTIONS = ("exportable", "fused_attention", "shared_attention")


def register_variant(fn: Callable[[], PSViTConfig]) -> Callable[[], PSViTConfig]:
    """Register ``fn`` (returning a config) under its function name."""
    if fn.__name__ in _VARIANTS:
        raise ValueError(f"variant {fn.__name__!r} is registered twice")
    _VARIANTS[fn.__name__] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Registered variant names, optionally filtered by a shell-style pattern (``"psvit_*"``)."""
    import fnmatch

    names = sorted(_VARIANTS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def unknown_variant(name: str) -> UnknownVariantError:
    close = difflib.get_close_matches(name, list(_VARIANTS), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return UnknownVariantError(
        f"unknown variant {name!r}.{hint} Known variants: {', '.join(list_models())} "
        f"(`psvit-export info` lists them)."
    )


def get_config(name: str, **overrides: Any) -> PSViTConfig:
    """The config of variant ``name`` with ``overrides`` applied (any config field, e.g. ``share=()``)."""
    try:
        fn = _VARIANTS[name]
    except KeyError:
        raise unknown_variant(name) from None
    return fn().replace(**overrides) if overrides else fn()


def create_model(name_or_config: str | PSViTConfig, **kwargs: Any):
    """Build a PSViT from a variant name (or a config) with config overrides and build options.

    Build options: ``exportable``, ``fused_attention``, ``shared_attention`` (see :class:`psvit.PSViT`);
    every other keyword overrides a config field, e.g. ``create_model("psvit_2d_tiny", num_classes=10)``.
    """
    from .model import PSViT

    options = {k: kwargs.pop(k) for k in MODEL_OPTIONS if k in kwargs}
    if isinstance(name_or_config, PSViTConfig):
        cfg = name_or_config.replace(**kwargs) if kwargs else name_or_config
    elif isinstance(name_or_config, str):
        cfg = get_config(name_or_config, **kwargs)
    else:
        raise ConfigError(f"expected a variant name or a PSViTConfig, got {type(name_or_config).__name__}")
    model = PSViT(cfg, **options)
    model.variant = name_or_config if isinstance(name_or_config, str) else None
    return model
