"""What can be exported: a checkpoint (``.safetensors``; ``.pth`` with a variant), ``demo``, or a variant
name (random weights, seeded, and flagged as such everywhere they show up)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import DEMO, STATE_DICT_EXTENSIONS, load_checkpoint
from ..config import PSViTConfig
from ..errors import ConfigError, UnknownVariantError
from ..registry import create_model, list_models, unknown_variant

CHECKPOINT_EXTENSIONS = (".safetensors", *STATE_DICT_EXTENSIONS)


@dataclass
class ModelSource:
    """An exportable model (eval mode, explicit attention) and where it came from."""

    model: torch.nn.Module
    config: PSViTConfig
    description: str
    variant: str | None = None
    class_names: list[str] | None = None
    sha256: str | None = None  # of the checkpoint file; None for random weights
    random_weights: bool = False
    seed: int | None = None  # random weights only

    @property
    def preprocess(self) -> dict[str, Any]:
        return self.config.preprocess


def is_checkpoint_like(source: str | os.PathLike) -> bool:
    """True for ``demo``, an existing file, or a name that looks like a checkpoint path."""
    text = str(source)
    return (
        text == DEMO
        or Path(text).is_file()
        or text.endswith(CHECKPOINT_EXTENSIONS)
        or os.sep in text
    )


def load_source(source: str | os.PathLike, *, variant: str | None = None, seed: int = 0) -> ModelSource:
    """Load ``source`` as an exportable model.

    Args:
        source: a checkpoint path, ``"demo"`` or a variant name (random weights drawn with ``seed``).
        variant: the architecture of a ``.pth`` state dict that carries no config.
        seed: seed of the random weights of a bare variant name (same seed, same weights).
    """
    text = str(source)
    if text.endswith(".onnx"):
        raise ConfigError(
            f"{text} is an ONNX file; export starts from a checkpoint, 'demo' or a variant name "
            f"(use `psvit-export compare` or `inspect` for ONNX files)"
        )
    if is_checkpoint_like(text):
        ckpt = load_checkpoint(text, variant=variant, exportable=True)
        return ModelSource(
            model=ckpt.model, config=ckpt.config, description=f"checkpoint {ckpt.path}",
            variant=ckpt.variant, class_names=ckpt.class_names, sha256=ckpt.sha256,
        )
    if text in list_models():
        if variant is not None and variant != text:
            raise ConfigError(f"SOURCE is variant {text!r} but --variant says {variant!r}; give one of them")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_model(text, exportable=True)
        model.eval()
        return ModelSource(
            model=model, config=model.cfg, variant=text, random_weights=True, seed=seed,
            description=f"variant {text} with RANDOM WEIGHTS (seed {seed}) - not a trained model",
        )
    raise UnknownVariantError(
        f"{text!r} is not an existing checkpoint file or 'demo'; as a variant name: {unknown_variant(text)}"
    )
