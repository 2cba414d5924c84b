"""The registered PSViT variants (see docs: three stages, two pooling layers, within ±15% of the matching
DeiT's MACs at 224x224, head width 64) and DeiT expressed as one-stage PSViT configs."""
from __future__ import annotations

from .config import PSViTConfig
from .registry import register_variant


def _every_second_block(depths: tuple[int, ...], stages: tuple[int, ...]) -> tuple[int, ...]:
    """Global indices of blocks 1, 3, 5, ... (within the stage) of the given stages: pairs share one map."""
    starts = [sum(depths[:s]) for s in range(len(depths))]
    return tuple(starts[s] + i for s in stages for i in range(1, depths[s], 2))


def _psvit(kind: str, dims, depths, heads, **kw) -> PSViTConfig:
    return PSViTConfig(
        dims=dims, depths=depths, heads=heads, pool_kinds=kind, pool_ops="conv",
        share=_every_second_block(depths, (1, 2)), **kw,
    )


@register_variant
def psvit_2d_tiny() -> PSViTConfig:
    return _psvit("2d", (192, 384, 576), (4, 6, 4), (3, 6, 9))


@register_variant
def psvit_2d_small() -> PSViTConfig:
    return _psvit("2d", (384, 576, 768), (4, 8, 8), (6, 9, 12))


@register_variant
def psvit_1d_tiny() -> PSViTConfig:
    return _psvit("1d", (192, 256, 384), (4, 6, 4), (3, 4, 6))


@register_variant
def psvit_1d_small() -> PSViTConfig:
    return _psvit("1d", (384, 512, 768), (4, 6, 4), (6, 8, 12))


@register_variant
def psvit_micro() -> PSViTConfig:
    """32x32 input, 8x8 patch grid (64 -> 16 -> 4 tokens): for tests and the bundled demo model."""
    depths = (2, 2, 2)
    return PSViTConfig(
        img_size=32, patch_size=4, num_classes=10, dims=(64, 96, 128), depths=depths, heads=(4, 6, 8),
        pool_kinds="2d", pool_ops="conv", share=_every_second_block(depths, (1, 2)),
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_pct=1.0, interpolation="bilinear",
    )


@register_variant
def deit_tiny() -> PSViTConfig:
    return PSViTConfig(dims=(192,), depths=(12,), heads=(3,))


@register_variant
def deit_small() -> PSViTConfig:
    return PSViTConfig(dims=(384,), depths=(12,), heads=(6,))
