"""What can be exported: a checkpoint (``.safetensors``; ``.pth`` with a variant), ``demo``, or a variant
name (random weights, seeded, and flagged as such everywhere they show up). What a source is comes from
:func:`psvit.artifacts.detect_artifact`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..artifacts import ArtifactKind, detect_artifact
from ..checkpoint import load_checkpoint
from ..config import PSViTConfig
from ..errors import ConfigError
from ..registry import create_model


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


def load_source(source: str | os.PathLike, *, variant: str | None = None, seed: int = 0) -> ModelSource:
    """Load ``source`` as an exportable model.

    Args:
        source: a checkpoint path, ``"demo"`` or a variant name (random weights drawn with ``seed``).
        variant: the architecture of a ``.pth`` state dict that carries no config.
        seed: seed of the random weights of a bare variant name (same seed, same weights).
    """
    text = str(source)
    kind = detect_artifact(text).kind  # UnknownVariantError / ArtifactError for what is nothing we know
    if kind in (ArtifactKind.ONNX, ArtifactKind.ENGINE):
        what = "an ONNX file" if kind is ArtifactKind.ONNX else "a TensorRT engine"
        raise ConfigError(
            f"{text} is {what}; export starts from a checkpoint, 'demo' or a variant name "
            f"(use `psvit-export compare` or `inspect` for ONNX files)"
        )
    if kind is ArtifactKind.CHECKPOINT:
        ckpt = load_checkpoint(text, variant=variant, exportable=True)
        return ModelSource(
            model=ckpt.model, config=ckpt.config, description=f"checkpoint {ckpt.path}",
            variant=ckpt.variant, class_names=ckpt.class_names, sha256=ckpt.sha256,
        )
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
