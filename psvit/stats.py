"""Parameter and MAC counts, token counts and sharing facts of a PSViT, computed from its config."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .config import PSViTConfig


@dataclass(frozen=True)
class ModelStats:
    """Static facts of one model. ``macs`` counts the multiply-accumulates of matrix products and
    convolutions for one image (norms, softmax, GELU and pooling arithmetic are not counted), every token
    through every block; an exportable model's ``forward`` runs the last block for the class token only,
    which skips a little of that (7% of ``deit_small``)."""

    name: str
    params: int
    macs: int
    img_size: int
    tokens: tuple[int, ...]  # per stage, class token included
    dims: tuple[int, ...]
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    pooling: str
    shared_blocks: tuple[int, ...]
    attention_maps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _attention_macs(n: int, d: int, computes_map: bool, recomputes_map: bool) -> int:
    """Projections plus QK^T and A.V for one block of ``n`` tokens and width ``d``."""
    proj_in = 3 * d * d if computes_map else d * d  # qkv, or v only for a sharing block
    qk = n * n * d if (computes_map or recomputes_map) else 0
    return n * proj_in + qk + n * n * d + n * d * d  # ... + A.V + output projection


def count_macs(cfg: PSViTConfig, shared_attention: str | tuple[str, ...] = "map") -> int:
    """Analytic MACs per image; ``"qk"`` stages recompute the map in each sharing block."""
    modes = (shared_attention,) * cfg.num_stages if isinstance(shared_attention, str) else shared_attention
    p = cfg.patch_size
    macs = cfg.patch_tokens[0] * cfg.dims[0] * cfg.in_chans * p * p
    shared = set(cfg.share)
    for b in range(cfg.depth):
        s = cfg.stage_of_block(b)
        n, d = cfg.tokens[s], cfg.dims[s]
        sharing = b in shared
        macs += _attention_macs(n, d, not sharing, sharing and modes[s] == "qk")
        macs += 2 * n * d * int(d * cfg.mlp_ratio)
    for s in range(cfg.num_stages - 1):
        d_in, d_out, n_out = cfg.dims[s], cfg.dims[s + 1], cfg.patch_tokens[s + 1]
        kernel = 9 if cfg.pool_kinds[s] == "2d" else 3
        if cfg.pool_ops[s] == "conv":
            macs += n_out * d_out * (d_in // math.gcd(d_in, d_out)) * kernel
        elif d_in != d_out:
            macs += n_out * d_in * d_out  # projection after max/avg pooling
        macs += d_in * d_out  # class-token projection
    macs += cfg.dims[-1] * cfg.num_classes
    return macs


def model_stats(name_or_model: Any, **overrides: Any) -> ModelStats:
    """Stats of a variant name (with config overrides), a :class:`PSViTConfig` or a built model."""
    from .model import PSViT
    from .registry import create_model, get_config

    if isinstance(name_or_model, PSViT):
        model, name = name_or_model, getattr(name_or_model, "variant", None) or "custom"
        cfg, modes = model.cfg, model.shared_attention
    else:
        if isinstance(name_or_model, PSViTConfig):
            cfg, name = name_or_model.replace(**overrides), "custom"
        else:
            cfg, name = get_config(name_or_model, **overrides), name_or_model
        model, modes = None, "map"
    if model is None:
        import torch

        with torch.device("meta"):
            model = create_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    layers = [f"{k}/{o}" for k, o in zip(cfg.pool_kinds, cfg.pool_ops)]
    pooling = (f"{len(layers)}x {layers[0]}" if len(set(layers)) == 1 else ", ".join(layers)) if layers else "none"
    return ModelStats(
        name=name, params=params, macs=count_macs(cfg, modes), img_size=cfg.img_size, tokens=cfg.tokens,
        dims=cfg.dims, depths=cfg.depths, heads=cfg.heads, pooling=pooling, shared_blocks=cfg.share,
        attention_maps=cfg.num_attention_maps,
    )
