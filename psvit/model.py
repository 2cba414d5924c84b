"""PSViT: a vision transformer with token pooling between stages and attention sharing between blocks.

Module and parameter names follow timm's ``VisionTransformer`` wherever the structure is the same
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.norm1``, ``blocks.N.attn.qkv``, ...), so a
one-stage config loads timm DeiT weights directly. Blocks are numbered globally over all stages; pooling
layers live in ``pools``.

Every shape is computed from the config when the model is built: reshapes use ``-1`` for the batch and the
config's token counts, and with ``exportable=True`` nothing in ``forward`` reads the batch size, which keeps
exported graphs free of run-time shape arithmetic.

Exportable models (``exportable=True``) compute the same function in the layout backends run fastest:
tokens are token-major, (N, B, D), from the patch embedding to the head, so the per-head (B, H, N, hd) views
of Q, K and V are permutations that backends fold into their batched products (ONNX Runtime:
``FusedMatMul`` with transposed batch dimensions) instead of copying, and the class token is ``x[:1]``.
Q, K and V are three GEMMs on the rows of the ``qkv`` weight (no Split copying the (N, B, 3D) product; INT8
quantization merges them back into one GEMM: :mod:`psvit.calibration.merge_gemms`). ``forward`` of an
exportable model computes the last block for the class token only (the head reads nothing else): the same
logits without the last block's work on patch tokens (its keys and values excepted).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from .config import PSViTConfig
from .errors import ConfigError
from .fields import coerce

SHARE_MODES = ("map", "qk")
# What a block hands to the block that shares its attention: the probabilities A (map mode) or the
# scaled query and the key of the block that computed them (qk mode).
AttentionState = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor], None]


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, by a convolution with kernel = stride = patch size."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.in_chans = in_chans
        self.dim = dim
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor, token_major: bool = False) -> torch.Tensor:
        """Images (B, C, H, W) -> patch tokens (B, h*w, D), or (h*w, B, D) with ``token_major``."""
        x = self.proj(x).reshape(-1, self.dim, self.num_patches)  # (B, D, h*w)
        return x.permute(2, 0, 1) if token_major else x.transpose(1, 2)  # (h*w, B, D) or (B, h*w, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Token-major (T, B, H·hd) -> per-head view (B, H, T, hd): a permutation that backends fold into their
    batched products (ONNX Runtime: ``FusedMatMul`` with transposed batch dimensions)."""
    return t.reshape(t.shape[0], -1, heads, t.shape[-1] // heads).permute(1, 2, 0, 3)  # (B, H, T, hd)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """Per-head (B, H, T, hd) -> token-major (T, B, H·hd)."""
    return t.permute(2, 0, 1, 3).reshape(t.shape[2], -1, t.shape[1] * t.shape[3])  # (T, B, H·hd)


class Attention(nn.Module):
    """Self-attention that computes its own map, and hands it on when the next block shares it.

    ``provides`` is set by :meth:`PSViT.set_shared_attention`: None (nobody shares this map), ``"map"``
    (return the probabilities A) or ``"qk"`` (return the scaled Q and K so the sharer recomputes A).
    ``tokens_first`` (exportable models): ``x`` is token-major (N, B, D) (see the module docstring), and
    ``class_only`` computes the output of the class token only.
    """

    def __init__(self, dim: int, heads: int, tokens: int, qkv_bias: bool, fused: bool,
                 tokens_first: bool = False) -> None:
        super().__init__()
        self.dim, self.heads, self.tokens = dim, heads, tokens
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.fused = fused
        self.tokens_first = tokens_first
        self.provides: str | None = None
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, state: AttentionState = None,
                class_only: bool = False) -> tuple[torch.Tensor, AttentionState]:
        if self.tokens_first:
            return self._forward_token_major(x, class_only)
        n, h, hd = self.tokens, self.heads, self.head_dim
        qkv = self.qkv(x).reshape(-1, n, 3, h, hd).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        if self.fused and self.provides != "map":
            out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd)
            q = q * self.scale if self.provides == "qk" else q
            attn = None
        else:
            q = q * self.scale
            attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
            out = attn @ v  # (B, H, N, hd)
        # Sharers get A itself (map) or the scaled Q and K to recompute it (qk).
        new_state: AttentionState = {"map": attn, "qk": (q, k), None: None}[self.provides]
        out = out.transpose(1, 2).reshape(-1, n, self.dim)  # (B, N, D)
        return self.proj(out), new_state

    def _forward_token_major(self, x: torch.Tensor, class_only: bool) -> tuple[torch.Tensor, AttentionState]:
        """``x`` (N, B, D) -> (N, B, D), or (1, B, D) for the class token only (``class_only``; no sharer
        may need this block's map then)."""
        if class_only and self.provides is not None:
            raise RuntimeError("class_only attention cannot hand its map on: its queries are the class token's")
        # Three GEMMs on the rows of ``qkv`` instead of one GEMM and a Split: the Split's copy of the whole
        # (N, B, 3D) product is gone, and a class-only block projects the class token's query only.
        d, w, b = self.dim, self.qkv.weight, self.qkv.bias  # w (3D, D): rows of Q, K, V
        # Slices, not chunk(): the exporter folds single-output Slices of weights into initializers.
        w_q, w_k, w_v = w[:d], w[d:2 * d], w[2 * d:]  # each (D, D)
        b_q, b_k, b_v = (b[:d], b[d:2 * d], b[2 * d:]) if b is not None else (None, None, None)
        q = F.linear(x[:1] if class_only else x, w_q, b_q)  # (Nq, B, D)
        k, v = F.linear(x, w_k, b_k), F.linear(x, w_v, b_v)  # each (N, B, D)
        q = split_heads(q, self.heads) * self.scale  # (B, H, Nq, hd)
        k, v = split_heads(k, self.heads), split_heads(v, self.heads)  # each (B, H, N, hd)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, Nq, N)
        out = merge_heads(attn @ v)  # (Nq, B, D)
        new_state: AttentionState = {"map": attn, "qk": (q, k), None: None}[self.provides]
        return self.proj(out), new_state


class SharedAttention(nn.Module):
    """Attention of a sharing block: no Q/K projections, its own V, the map of a previous block.

    ``mode`` ``"map"`` multiplies the received probabilities with V; ``"qk"`` recomputes them from the
    received Q and K (fusable by flash/TensorRT MHA kernels). Both are the same function. ``tokens_first``
    and ``class_only``: as in :class:`Attention`; the received map is always the full one, and
    ``class_only`` takes the class token's row after A·V, so that the map feeds this block's product
    directly (the graph checks' one-map-many-products form; TensorRT's fused attention in ``qk`` mode; ONNX
    Runtime's common-subexpression elimination with the owner's map). The rows skipped are cheap: N·N·hd.
    """

    def __init__(self, dim: int, heads: int, tokens: int, qkv_bias: bool, fused: bool,
                 tokens_first: bool = False) -> None:
        super().__init__()
        self.dim, self.heads, self.tokens = dim, heads, tokens
        self.head_dim = dim // heads
        self.fused = fused
        self.tokens_first = tokens_first
        self.mode = "map"
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, state: AttentionState,
                class_only: bool = False) -> tuple[torch.Tensor, AttentionState]:
        if state is None:
            raise RuntimeError("a sharing block was called without the attention of its predecessor")
        n, h, hd = self.tokens, self.heads, self.head_dim
        if self.tokens_first:
            v = split_heads(self.v(x), h)  # (B, H, N, hd)
        else:
            v = self.v(x).reshape(-1, n, h, hd).transpose(1, 2)  # (B, H, N, hd)
        if self.mode == "map":
            out = state @ v  # (B, H, N, hd)
        else:
            q, k = state
            if self.fused:
                out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # q is pre-scaled
            else:
                out = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v  # (B, H, N, hd)
        if self.tokens_first:
            out = merge_heads(out[:, :, :1] if class_only else out)  # (Nq, B, D), Nq = 1 or N
        else:
            out = out.transpose(1, 2).reshape(-1, n, self.dim)  # (B, N, D)
        return self.proj(out), state  # chains: the next sharer reuses the same map


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: PSViTConfig, stage: int, shares: bool, fused: bool, tokens_first: bool = False) -> None:
        super().__init__()
        dim, heads, tokens = cfg.dims[stage], cfg.heads[stage], cfg.tokens[stage]
        self.shares = shares
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        attn_cls = SharedAttention if shares else Attention
        self.attn = attn_cls(dim, heads, tokens, cfg.qkv_bias, fused, tokens_first)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor, state: AttentionState,
                class_only: bool = False) -> tuple[torch.Tensor, AttentionState]:
        """``class_only`` (token-major ``x`` (N, B, D)): the output of the class token only, (1, B, D)."""
        a, state = self.attn(self.norm1(x), state, class_only)
        if class_only:
            x = x[:1]  # (1, B, D)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return x, state


class TokenPool(nn.Module):
    """Halve the patch tokens (kernel 3, stride 2, padding 1) and change the width; class token by a Linear.

    ``2d`` pools the h x w token grid, ``1d`` the token sequence. ``conv`` is a grouped convolution with
    groups = gcd(width in, width out) (depthwise when the input width divides the output width, as in
    PiT); ``max``/``avg`` pool per channel and are followed by a Linear when the width changes.
    ``tokens_first`` (exportable models): tokens in and out are token-major, (T, B, D).
    """

    def __init__(self, kind: str, op: str, dim_in: int, dim_out: int, tokens_in: int, tokens_out: int,
                 tokens_first: bool = False) -> None:
        super().__init__()
        self.kind, self.op = kind, op
        self.tokens_first = tokens_first
        self.dim_in, self.dim_out = dim_in, dim_out
        self.tokens_in, self.tokens_out = tokens_in, tokens_out  # patch tokens, class token excluded
        self.side_in = math.isqrt(tokens_in)
        self.side_out = math.isqrt(tokens_out)
        two_d = kind == "2d"
        if op == "conv":
            conv = nn.Conv2d if two_d else nn.Conv1d
            self.pool = conv(dim_in, dim_out, 3, stride=2, padding=1, groups=math.gcd(dim_in, dim_out))
            width_after_pool = dim_out
        elif op == "max":
            self.pool = (nn.MaxPool2d if two_d else nn.MaxPool1d)(3, stride=2, padding=1)
            width_after_pool = dim_in
        else:
            pool = nn.AvgPool2d if two_d else nn.AvgPool1d
            self.pool = pool(3, stride=2, padding=1, count_include_pad=False)
            width_after_pool = dim_in
        self.width_after_pool = width_after_pool
        self.proj = nn.Linear(dim_in, dim_out) if width_after_pool != dim_out else None
        self.cls_proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens_first:
            cls, t = x[:1], x[1:].permute(1, 2, 0)  # (1, B, C), (B, C, N)
            t = self._pool(t).permute(2, 0, 1)  # (N', B, C')
            if self.proj is not None:
                t = self.proj(t)  # (N', B, C_out)
            return torch.cat([self.cls_proj(cls), t], dim=0)  # (1 + N', B, C_out)
        cls, tokens = x[:, :1], x[:, 1:]  # (B, 1, C), (B, N, C)
        t = self._pool(tokens.transpose(1, 2)).transpose(1, 2)  # (B, N', C')
        if self.proj is not None:
            t = self.proj(t)  # (B, N', C_out)
        return torch.cat([self.cls_proj(cls), t], dim=1)  # (B, 1 + N', C_out)

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, C, N) -> pooled (B, C', N')."""
        if self.kind == "2d":
            t = t.reshape(-1, self.dim_in, self.side_in, self.side_in)  # (B, C, h, w)
            t = self.pool(t)  # (B, C', h', w')
            return t.reshape(-1, self.width_after_pool, self.tokens_out)  # (B, C', N')
        return self.pool(t)  # (B, C', N')


class PSViT(nn.Module):
    """PSViT classifier built from a :class:`PSViTConfig`.

    Args:
        cfg: the architecture.
        exportable: build for tracing (ONNX/TensorRT): explicit matmul-softmax-matmul attention, tokens
            token-major (N, B, D) throughout (head layouts fold into the batched products, see the module
            docstring), a class token broadcast without reading the batch size, so the graph has no shape
            computations, and ``forward`` computing the last block for the class token only.
        fused_attention: use ``scaled_dot_product_attention`` where no attention map has to be materialised.
            None means "not exportable".
        shared_attention: how sharing blocks get their map, ``"map"`` or ``"qk"``, one for all stages or one
            per stage; see :meth:`set_shared_attention`.
    """

    def __init__(
        self,
        cfg: PSViTConfig,
        exportable: bool = False,
        fused_attention: bool | None = None,
        shared_attention: str | Sequence[str] = "map",
    ) -> None:
        super().__init__()
        if not isinstance(cfg, PSViTConfig):
            raise ConfigError(f"PSViT needs a PSViTConfig, got {type(cfg).__name__}; or use psvit.create_model(name)")
        exportable = coerce(exportable, bool, "build option 'exportable'")
        fused_attention = coerce(fused_attention, bool | None, "build option 'fused_attention'")
        self.cfg = cfg
        self.exportable = exportable
        fused = (not exportable) if fused_attention is None else fused_attention
        if exportable and fused:
            raise ConfigError("exportable=True needs explicit attention: leave fused_attention unset or False")
        self.fused_attention = fused
        self.num_classes = cfg.num_classes
        self.num_features = cfg.dims[-1]

        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, cfg.dims[0])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dims[0]))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens[0], cfg.dims[0]))
        shared = set(cfg.share)
        self.blocks = nn.ModuleList(
            Block(cfg, cfg.stage_of_block(b), b in shared, fused, tokens_first=exportable)
            for b in range(cfg.depth)
        )
        self.pools = nn.ModuleList(
            TokenPool(
                cfg.pool_kinds[s], cfg.pool_ops[s], cfg.dims[s], cfg.dims[s + 1],
                cfg.patch_tokens[s], cfg.patch_tokens[s + 1], tokens_first=exportable,
            )
            for s in range(cfg.num_stages - 1)
        )
        self.norm = nn.LayerNorm(cfg.dims[-1], eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dims[-1], cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        # Which pooling layer runs before each block (None for most blocks).
        self._pool_before = {start: s - 1 for s, start in enumerate(cfg.stage_starts) if s > 0}
        self.set_shared_attention(shared_attention)
        self.init_weights()

    # ---- set-up ----------------------------------------------------------------------------------
    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def weight_gemms(self) -> int:
        """How many products with a weight matrix ``forward`` runs: one per Linear layer, three for the Q, K
        and V rows of an exportable attention's ``qkv`` (the count an exported graph's MatMul/Gemm nodes
        on initializers must match)."""
        linear = sum(isinstance(m, nn.Linear) for m in self.modules())
        return linear + sum(2 for m in self.modules() if isinstance(m, Attention) and m.tokens_first)

    def set_shared_attention(self, mode: str | Sequence[str]) -> None:
        """Choose per stage how a shared map reaches its sharers: ``"map"`` (A computed once and reused)
        or ``"qk"`` (the owner's Q and K reused, A recomputed; fusable). Same function either way."""
        n = self.cfg.num_stages
        modes = (mode,) * n if isinstance(mode, str) else tuple(mode) if isinstance(mode, (list, tuple)) else ()
        if len(modes) != n or any(m not in SHARE_MODES for m in modes):
            raise ConfigError(
                f"shared_attention must be one of {SHARE_MODES} or one per stage ({n} stages), got {mode!r}"
            )
        self.shared_attention = modes
        shared = set(self.cfg.share)
        for b, blk in enumerate(self.blocks):
            stage_mode = modes[self.cfg.stage_of_block(b)]
            if blk.shares:
                blk.attn.mode = stage_mode
            else:
                blk.attn.provides = stage_mode if (b + 1) in shared else None

    # ---- forward ---------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        c, s = self.cfg.in_chans, self.cfg.img_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"PSViT expects images of shape (B, {c}, {s}, {s}), got {tuple(x.shape)}")

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> patch tokens with the class token and position embedding, (B, 1 + N0, D0)."""
        x = self.patch_embed(x)  # (B, N0, D0)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1 + N0, D0)

    def _embed_token_major(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> token-major embedded tokens (1 + N0, B, D0), class token first; the class token is
        broadcast against a (1, B, D) slice of the patches instead of expand(B, ...): no Shape op."""
        x = self.patch_embed(x, token_major=True)  # (N0, B, D)
        cls = self.cls_token + x[:1] * 0.0  # (1, B, D)
        return torch.cat([cls, x], dim=0) + self.pos_embed.transpose(0, 1)  # (1 + N0, B, D)

    def _tokens(self, x: torch.Tensor, class_only: bool = False) -> torch.Tensor:
        """Images -> tokens after the last block, before the last norm: (B, 1 + N, D), or token-major
        (1 + N, B, D) for exportable models; ``class_only`` (exportable models): the class token's (1, B, D),
        and the last block computes nothing else."""
        self._check_input(x)
        x = self._embed_token_major(x) if self.exportable else self._embed(x)
        state: AttentionState = None
        last = len(self.blocks) - 1
        for b, blk in enumerate(self.blocks):
            pool = self._pool_before.get(b)
            if pool is not None:
                x = self.pools[pool](x)  # (B, 1 + N_s, D_s), token-major (1 + N_s, B, D_s)
                state = None
            x, state = blk(x, state, class_only=class_only and b == last)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> final tokens after the last norm (B, 1 + N_last, D_last)."""
        x = self.norm(self._tokens(x))
        if self.exportable:  # token-major (1 + N, B, D) -> (B, 1 + N, D)
            x = x.transpose(0, 1)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, 0])  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exportable:  # the head reads the class token only: nothing else of the last block is computed
            return self.head(self.norm(self._tokens(x, class_only=True)[0]))  # (1, B, D) -> (B, num_classes)
        return self.forward_head(self.forward_features(x))
