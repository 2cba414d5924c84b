"""A weight-sharing supernet over the search space (single path: one candidate per forward pass).

It is built from the model library's own modules, by composition: the blocks of the base variant with
every block keeping its Q/K/V projection (``share=()``), one :class:`psvit.model.TokenPool` per stage,
kind and op, and the base's embedding, norm and head. A path (a :class:`Candidate`) runs the first ``d``
blocks of each stage; a sharing block skips its own Q and K and uses the previous block's map with the V
part of its own ``qkv`` projection. :meth:`Supernet.extract` copies a path's weights into a stand-alone
:class:`psvit.PSViT` that computes the same function (``tests/test_search.py`` checks it).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PSViTConfig
from ..model import Block, TokenPool
from ..registry import create_model
from .space import Candidate, SearchSpace


def pool_key(stage: int, kind: str, op: str) -> str:
    return f"{stage}_{kind}_{op}"


class Supernet(nn.Module):
    """All candidates of ``space`` in one set of weights; ``forward(x, path)`` runs one of them."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        base = space.base
        self.cfg = base  # num_classes and the input, as a PSViT exposes them
        full = create_model(base.replace(share=()))  # every block with its own Q/K/V
        self.patch_embed, self.cls_token, self.pos_embed = full.patch_embed, full.cls_token, full.pos_embed
        self.blocks: nn.ModuleList = full.blocks  # global index = base stage start + position
        self.norm, self.head = full.norm, full.head
        self.stage_starts = base.stage_starts
        pools: dict[str, TokenPool] = {}
        for kinds in space.kind_sequences:
            for op in space.ops:
                if all(pool_key(s, k, op) in pools for s, k in enumerate(kinds)):
                    continue
                # pooling layers built and initialised by the model library, along one kind sequence
                # (its token counts: 2d layers see their grid; 1d layers do not depend on them)
                donor = create_model(base.replace(pool_kinds=kinds, pool_ops=op, share=(), depths=(1,) * base.num_stages))
                for s, kind in enumerate(kinds):
                    pools.setdefault(pool_key(s, kind, op), donor.pools[s])
        self.pools = nn.ModuleDict(dict(sorted(pools.items())))

    # ---- forward --------------------------------------------------------------------------------
    def _block(self, blk: Block, x: torch.Tensor, state: Any, shares: bool, provides: bool) -> tuple[torch.Tensor, Any]:
        """One block of the path; ``state`` is the scaled Q and the K of the map owner (qk form)."""
        qkv_layer, proj = blk.attn.qkv, blk.attn.proj
        heads = blk.attn.heads
        dim = x.shape[-1]
        hd = dim // heads
        h = blk.norm1(x)  # (B, N, D)
        if shares:
            w, bias = qkv_layer.weight[2 * dim:], None if qkv_layer.bias is None else qkv_layer.bias[2 * dim:]
            v = F.linear(h, w, bias).unflatten(-1, (heads, hd)).transpose(1, 2)  # (B, H, N, hd)
            q, k = state
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # q is pre-scaled
        else:
            qkv = qkv_layer(h).unflatten(-1, (3, heads, hd)).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
            q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
            out = F.scaled_dot_product_attention(q, k, v)
            state = (q * blk.attn.scale, k) if provides else None
        x = x + proj(out.transpose(1, 2).flatten(2))  # (B, N, D)
        x = x + blk.mlp(blk.norm2(x))
        return x, state

    def forward(self, x: torch.Tensor, path: Candidate) -> torch.Tensor:
        """Logits (B, num_classes) of the candidate ``path`` for images (B, C, H, W)."""
        x = self.patch_embed(x)  # (B, N0, D0)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed  # (B, 1 + N0, D0)
        for s, depth in enumerate(path.depths):
            if s > 0:
                x = self.pools[pool_key(s - 1, path.pool_kinds[s - 1], path.pool_ops[s - 1])](x)
            shared = set(path.share[s])
            state = None
            for p in range(depth):
                blk = self.blocks[self.stage_starts[s] + p]
                x, state = self._block(blk, x, state, p in shared, (p + 1) in shared)
        return self.head(self.norm(x)[:, 0])

    # ---- stand-alone models ---------------------------------------------------------------------
    def _path_keys(self, path: Candidate) -> dict[str, tuple[str, bool, int]]:
        """Stand-alone state-dict prefix -> (supernet prefix, is a sharing block, width) along ``path``."""
        cfg = self.space.to_config(path)
        keys: dict[str, tuple[str, bool, int]] = {}
        for s in range(cfg.num_stages):
            if s > 0:
                keys[f"pools.{s - 1}."] = (f"pools.{pool_key(s - 1, path.pool_kinds[s - 1], path.pool_ops[s - 1])}.",
                                           False, 0)
            for p in range(path.depths[s]):
                keys[f"blocks.{cfg.stage_starts[s] + p}."] = (f"blocks.{self.stage_starts[s] + p}.", p in path.share[s],
                                                              cfg.dims[s])
        return keys

    def _translate(self, name: str, keys: dict[str, tuple[str, bool, int]]) -> tuple[str, slice | None]:
        """A stand-alone parameter name -> (supernet name, rows of it); a sharer's V is the V part of qkv."""
        for prefix, (target, shares, dim) in keys.items():
            if name.startswith(prefix):
                rest = name[len(prefix):]
                if shares and rest.startswith("attn.v."):
                    return f"{target}attn.qkv.{rest[len('attn.v.'):]}", slice(2 * dim, 3 * dim)
                return target + rest, None
        return name, None  # embeddings, norm, head

    def extract(self, path: Candidate, **build_options: Any) -> nn.Module:
        """A stand-alone PSViT of ``path`` with the supernet's weights (eval mode); ``build_options`` as for
        :func:`psvit.create_model` (``exportable``, ``shared_attention``...)."""
        cfg: PSViTConfig = self.space.to_config(path)
        model = create_model(cfg, **build_options)
        own, keys = self.state_dict(), self._path_keys(path)
        state = {}
        for name in model.state_dict():
            src, rows = self._translate(name, keys)
            state[name] = (own[src] if rows is None else own[src][rows]).clone()
        model.load_state_dict(state, strict=True)
        model.variant = None
        return model.eval()

    @torch.no_grad()
    def absorb(self, model: nn.Module, path: Candidate) -> int:
        """Copy a trained stand-alone model of ``path`` into the supernet (the inverse of :meth:`extract`),
        e.g. to warm-start it from a trained base variant; returns the number of tensors copied. The Q/K rows
        of a block that shares in ``model`` keep the supernet's values."""
        own, keys = self.state_dict(), self._path_keys(path)
        copied = 0
        for name, value in model.state_dict().items():
            dst, rows = self._translate(name, keys)
            (own[dst] if rows is None else own[dst][rows]).copy_(value)
            copied += 1
        return copied


class SubnetView(nn.Module):
    """One path of a supernet as an ordinary classifier (``model(x)``), for evaluation."""

    def __init__(self, supernet: Supernet, path: Candidate) -> None:
        super().__init__()
        self.supernet, self.path = supernet, path
        self.cfg = supernet.cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, self.path)
