"""How shared attention is exported, per stage: ``map`` (the attention probabilities computed once and
multiplied with every sharer's V) or ``qk`` (the sharer reuses its predecessor's Q and K and recomputes
``softmax(Q Kᵀ)``, which fused attention kernels can take). ``auto`` picks per stage by token count.

The ``auto`` threshold is a measurement, not a guess: on an H200 (fp16, PyTorch, attention of two blocks
sharing one map) the qk/map time ratio was 0.58 at 197 tokens (batch 1), 0.35 (197, batch 32), 0.26
(197, batch 256), 0.71 at 50 tokens and 1.27 at 17 tokens (batch 256). Recomputing with a fused kernel
wins where tokens are many, the materialised map where they are few, so for GPU/TensorRT targets the
switch lies between 17 and 50 tokens; we take the midpoint, 33.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..config import PSViTConfig
from .errors import ExportError

SHARE_CHOICES = ("map", "qk", "auto")
QK_MIN_TOKENS_GPU = 33
QK_MIN_TOKENS_SOURCE = (
    "H200 fp16 PyTorch, two blocks sharing one map, qk/map time: 0.58 (197 tokens, b1), 0.35 (197, b32), "
    "0.26 (197, b256), 0.71 (50 tokens), 1.27 (17 tokens, b256); switch between 17 and 50 tokens -> 33"
)


@dataclass(frozen=True)
class SharingPlan:
    """The shared-attention mode of every stage and why it was chosen."""

    requested: str  # "map" | "qk" | "auto"
    modes: tuple[str, ...]  # one per stage, as passed to PSViT.set_shared_attention
    tokens: tuple[int, ...]  # attention sequence length per stage (class token included)
    shared_blocks: tuple[tuple[int, ...], ...]  # per stage: global indices of blocks that share
    qk_min_tokens: int | None = None  # auto only
    threshold_source: str | None = None  # auto only: where the threshold comes from

    def effective_modes(self) -> tuple[str | None, ...]:
        """Per stage: the mode, or None where no block of the stage shares (the mode changes nothing)."""
        return tuple(m if blocks else None for m, blocks in zip(self.modes, self.shared_blocks))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["effective_modes"] = list(self.effective_modes())
        return d


def check_sharing_options(mode: str, qk_min_tokens: int | None) -> None:
    """Refuse an unknown mode, a threshold without ``auto``, or a non-positive threshold."""
    if mode not in SHARE_CHOICES:
        raise ExportError(f"--shared-attention must be one of {', '.join(SHARE_CHOICES)}, got {mode!r}")
    if qk_min_tokens is not None and mode != "auto":
        raise ExportError(
            f"--qk-min-tokens only applies to --shared-attention auto (got --shared-attention {mode}); "
            f"drop one of the two"
        )
    if qk_min_tokens is not None and qk_min_tokens < 1:
        raise ExportError(f"--qk-min-tokens must be a positive token count, got {qk_min_tokens}")


def plan_shared_attention(
    config: PSViTConfig, mode: str = "map", qk_min_tokens: int | None = None
) -> SharingPlan:
    """Resolve ``map``/``qk``/``auto`` into one mode per stage.

    ``qk_min_tokens`` (auto only; None means the measured GPU default, :data:`QK_MIN_TOKENS_GPU`): a stage
    uses ``qk`` when its token count (class token included) is at least this, ``map`` otherwise.
    """
    check_sharing_options(mode, qk_min_tokens)
    shared = set(config.share)
    starts = config.stage_starts
    blocks = tuple(
        tuple(b for b in range(start, start + depth) if b in shared)
        for start, depth in zip(starts, config.depths)
    )
    if mode != "auto":
        return SharingPlan(mode, (mode,) * config.num_stages, config.tokens, blocks)
    threshold = QK_MIN_TOKENS_GPU if qk_min_tokens is None else qk_min_tokens
    source = QK_MIN_TOKENS_SOURCE if qk_min_tokens is None else "user override (--qk-min-tokens)"
    modes = tuple("qk" if n >= threshold else "map" for n in config.tokens)
    return SharingPlan("auto", modes, config.tokens, blocks, threshold, source)
