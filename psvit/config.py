"""The PSViT configuration: one frozen dataclass, validated against the compact set when built."""
from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .fields import check_fields

POOL_KINDS = ("2d", "1d")
POOL_OPS = ("conv", "max", "avg")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BROADCAST = ("pool_kinds", "pool_ops")  # a single string applies to every pooling layer


def pooled_length(n: int) -> int:
    """Length after a kernel-3, stride-2, padding-1 pooling: floor((n - 1) / 2) + 1."""
    return (n - 1) // 2 + 1


@dataclass(frozen=True)
class PSViTConfig:
    """Architecture of a PSViT. Stages are separated by token-pooling layers.

    ``share`` holds global block indices (0-based, counted over all stages) whose block reuses the
    attention map of the block before it. ``pool_kinds``/``pool_ops`` have one entry per pooling
    layer (``len(depths) - 1``); a single string is accepted and applies to every pooling layer.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    dims: tuple[int, ...] = (192,)
    depths: tuple[int, ...] = (12,)
    heads: tuple[int, ...] = (3,)
    pool_kinds: tuple[str, ...] = ()
    pool_ops: tuple[str, ...] = ()
    share: tuple[int, ...] = ()
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    # Preprocessing the weights were trained with (timm's names and defaults).
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        for name in ("dims", "depths", "heads", "share", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                object.__setattr__(self, name, (value,))  # one number: one entry
        # Every field gets its annotated type (or a ConfigError naming it) before any arithmetic on it.
        check_fields(self, "config", names=[f.name for f in dataclasses.fields(self) if f.name not in _BROADCAST])
        for name in _BROADCAST:
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,) * (len(self.depths) - 1))
        check_fields(self, "config", names=_BROADCAST)
        object.__setattr__(self, "share", tuple(sorted(self.share)))
        self._validate()

    # ----------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "num_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if any(d < 1 for d in self.dims):
            raise ConfigError(f"every stage needs a width of at least 1, got dims={self.dims}")
        if self.norm_eps <= 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps}")
        s = len(self.depths)
        if s < 1:
            raise ConfigError("depths must name at least one stage, e.g. depths=(12,)")
        if not (len(self.dims) == len(self.heads) == s):
            raise ConfigError(
                f"dims {self.dims}, depths {self.depths} and heads {self.heads} must have one entry per "
                f"stage ({s} stages)"
            )
        if len(self.pool_kinds) != s - 1 or len(self.pool_ops) != s - 1:
            raise ConfigError(
                f"{s} stages need {s - 1} pooling layer(s): pool_kinds={self.pool_kinds} and "
                f"pool_ops={self.pool_ops} must each have {s - 1} entries"
            )
        if any(d < 1 for d in self.depths):
            raise ConfigError(f"every stage needs at least one block, got depths={self.depths}")
        for i, (dim, h) in enumerate(zip(self.dims, self.heads)):
            if h < 1 or dim % h:
                raise ConfigError(f"stage {i}: dim {dim} is not divisible by heads {h}")
        for k in self.pool_kinds:
            if k not in POOL_KINDS:
                raise ConfigError(f"pool kind {k!r} is not one of {POOL_KINDS}")
        for op in self.pool_ops:
            if op not in POOL_OPS:
                raise ConfigError(f"pool op {op!r} is not one of {POOL_OPS}")
        if self.img_size % self.patch_size:
            raise ConfigError(
                f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )
        for i, kind in enumerate(self.pool_kinds):
            if kind == "2d" and self._grid_before_pool(i) is None:
                raise ConfigError(
                    f"pooling layer {i} is 2d but its input tokens do not form a square grid "
                    f"(a 1d pooling layer came before it); use pool_kinds='1d' after a 1d layer"
                )
        total = sum(self.depths)
        first_blocks = set(self.stage_starts)
        for b in self.share:
            if not 0 <= b < total:
                raise ConfigError(f"share index {b} is outside the {total} blocks (0..{total - 1})")
            if b in first_blocks:
                stage = self.stage_of_block(b)
                if stage == 0:
                    raise ConfigError(
                        f"block {b} is the first block of stage 0 and has no previous attention map "
                        f"to share"
                    )
                raise ConfigError(
                    f"block {b} is the first block of stage {stage}: sharing the map of block {b - 1} "
                    f"would cross a pooling layer (token counts differ); not in the compact set"
                )
        if self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ConfigError(f"mean/std need {self.in_chans} values (one per input channel)")
        if self.in_chans == 3:  # the preprocessing the weights expect must be one Preprocess can run
            from .preprocessing import Preprocess

            Preprocess.from_dict(self.preprocess)

    def _grid_before_pool(self, pool_index: int) -> int | None:
        """Side of the square token grid entering pooling layer ``pool_index``; None if not square."""
        side = self.img_size // self.patch_size
        for kind in self.pool_kinds[:pool_index]:
            if kind != "2d":
                return None
            side = pooled_length(side)
        return side

    # ---- derived, static shape facts -------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def depth(self) -> int:
        return sum(self.depths)

    @property
    def stage_starts(self) -> tuple[int, ...]:
        """Global index of the first block of each stage."""
        starts, acc = [], 0
        for d in self.depths:
            starts.append(acc)
            acc += d
        return tuple(starts)

    def stage_of_block(self, block: int) -> int:
        acc = 0
        for s, d in enumerate(self.depths):
            acc += d
            if block < acc:
                return s
        raise IndexError(block)

    @property
    def patch_tokens(self) -> tuple[int, ...]:
        """Patch tokens (class token excluded) in each stage, computed from the config alone."""
        n = (self.img_size // self.patch_size) ** 2
        side = self.img_size // self.patch_size
        counts = [n]
        for kind in self.pool_kinds:
            if kind == "2d":
                side = pooled_length(side)
                n = side * side
            else:
                n = pooled_length(n)
            counts.append(n)
        return tuple(counts)

    @property
    def tokens(self) -> tuple[int, ...]:
        """Tokens per stage including the class token (the attention sequence length)."""
        return tuple(n + 1 for n in self.patch_tokens)

    @property
    def map_owner(self) -> tuple[int, ...]:
        """For each block, the index of the block whose attention map it uses (itself if it computes one)."""
        owner = []
        shared = set(self.share)
        for b in range(self.depth):
            owner.append(owner[b - 1] if b in shared else b)
        return tuple(owner)

    @property
    def num_attention_maps(self) -> int:
        """Distinct attention maps computed per forward pass."""
        return self.depth - len(self.share)

    @property
    def preprocess(self) -> dict[str, Any]:
        """Input size and normalisation the weights expect (see :class:`psvit.preprocessing.Preprocess`)."""
        return {
            "img_size": self.img_size, "mean": list(self.mean), "std": list(self.std),
            "crop_pct": self.crop_pct, "interpolation": self.interpolation,
        }

    # ---- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PSViTConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object (field -> value), got a {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "PSViTConfig":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from exc

    def replace(self, **overrides: Any) -> "PSViTConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        return dataclasses.replace(self, **overrides)
