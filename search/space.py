"""The compact set around a base variant: what a candidate is, and how candidates are drawn and bred.

A candidate keeps the base's input, widths and heads and chooses, per stage, an elastic depth (1 up to the
base's depth), per pooling layer its kind (``2d``/``1d``; 2d only while the tokens still form a grid, i.e.
after no 1d layer) and op (``conv``/``max``/``avg``), and per block whether it reuses its predecessor's
attention map (never the first block of a stage). Every candidate is a valid :class:`PSViTConfig`.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import POOL_KINDS, POOL_OPS, PSViTConfig
from .errors import SearchError


@dataclass(frozen=True)
class Candidate:
    """One point of the space. ``share[s]`` lists the positions (within stage ``s``, >= 1) that share."""

    depths: tuple[int, ...]
    pool_kinds: tuple[str, ...]
    pool_ops: tuple[str, ...]
    share: tuple[tuple[int, ...], ...]

    @property
    def key(self) -> str:
        """A canonical text form (dict key, de-duplication, JSON)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return {"depths": list(self.depths), "pool_kinds": list(self.pool_kinds), "pool_ops": list(self.pool_ops),
                "share": [list(s) for s in self.share]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        return cls(tuple(int(x) for x in d["depths"]), tuple(d["pool_kinds"]), tuple(d["pool_ops"]),
                   tuple(tuple(int(p) for p in s) for s in d["share"]))

    def global_share(self) -> tuple[int, ...]:
        """The ``share`` field of the config: global block indices."""
        starts = np.cumsum((0, *self.depths[:-1]))
        return tuple(int(starts[s]) + p for s, positions in enumerate(self.share) for p in positions)


def valid_kind_sequences(num_pools: int) -> list[tuple[str, ...]]:
    """Pooling kinds that keep a square grid for every 2d layer: some 2d layers, then only 1d."""
    return [("2d",) * k + ("1d",) * (num_pools - k) for k in range(num_pools, -1, -1)]


class SearchSpace:
    """The compact set around ``base`` (its widths, heads and input fixed; see the module docstring)."""

    def __init__(self, base: PSViTConfig, kinds: tuple[str, ...] = POOL_KINDS, ops: tuple[str, ...] = POOL_OPS) -> None:
        self.base = base
        self.max_depths = base.depths
        self.num_pools = base.num_stages - 1
        self.kind_sequences = [seq for seq in valid_kind_sequences(self.num_pools) if set(seq) <= set(kinds)]
        if not self.kind_sequences:
            raise SearchError(f"no valid pooling-kind sequence with kinds {kinds}")
        self.ops = tuple(ops)

    # ---- membership and conversion --------------------------------------------------------------
    def check(self, c: Candidate) -> None:
        """Raise SearchError unless ``c`` lies in this space."""
        ok = (
            len(c.depths) == len(self.max_depths) == len(c.share)
            and all(1 <= d <= m for d, m in zip(c.depths, self.max_depths))
            and tuple(c.pool_kinds) in self.kind_sequences
            and len(c.pool_ops) == self.num_pools and all(o in self.ops for o in c.pool_ops)
            and all(all(1 <= p < d for p in s) and list(s) == sorted(set(s)) for s, d in zip(c.share, c.depths))
        )
        if not ok:
            raise SearchError(f"candidate {c.key} is not in the search space around {self.describe()}")

    def to_config(self, c: Candidate) -> PSViTConfig:
        """The full config of ``c``: the base with the candidate's depths, pooling and sharing."""
        self.check(c)
        return self.base.replace(depths=c.depths, pool_kinds=c.pool_kinds, pool_ops=c.pool_ops,
                                 share=c.global_share())

    def from_config(self, cfg: PSViTConfig) -> Candidate:
        """The candidate of a config that differs from the base only in the searched fields."""
        starts = cfg.stage_starts
        share = tuple(tuple(b - starts[s] for b in cfg.share if cfg.stage_of_block(b) == s)
                      for s in range(cfg.num_stages))
        c = Candidate(cfg.depths, cfg.pool_kinds, cfg.pool_ops, share)
        self.check(c)
        if self.to_config(c) != cfg:
            raise SearchError("the config differs from the base variant outside the searched fields "
                              "(widths, heads, input or classes)")
        return c

    def describe(self) -> str:
        return (f"depths <= {'/'.join(map(str, self.max_depths))}, pooling kinds "
                f"{[''.join(s) for s in self.kind_sequences]}, ops {list(self.ops)}")

    # ---- size and enumeration -------------------------------------------------------------------
    def size(self) -> int:
        """Number of distinct candidates."""
        per_stage = [sum(2 ** (d - 1) for d in range(1, m + 1)) for m in self.max_depths]
        return math.prod(per_stage) * len(self.kind_sequences) * len(self.ops) ** self.num_pools

    def _stage_choices(self, s: int) -> list[tuple[int, tuple[int, ...]]]:
        out = []
        for d in range(1, self.max_depths[s] + 1):
            for bits in itertools.product((False, True), repeat=d - 1):
                out.append((d, tuple(p + 1 for p, b in enumerate(bits) if b)))
        return out

    def enumerate(self) -> Iterator[Candidate]:
        """Every candidate, in a fixed order."""
        stages = [self._stage_choices(s) for s in range(len(self.max_depths))]
        for kinds in self.kind_sequences:
            for ops in itertools.product(self.ops, repeat=self.num_pools):
                for choice in itertools.product(*stages):
                    yield Candidate(tuple(d for d, _ in choice), kinds, ops, tuple(sh for _, sh in choice))

    # ---- sampling and breeding ------------------------------------------------------------------
    def _sample_stage(self, s: int, rng: np.random.Generator) -> tuple[int, tuple[int, ...]]:
        d = int(rng.integers(1, self.max_depths[s] + 1))
        return d, tuple(p for p in range(1, d) if rng.random() < 0.5)

    def sample(self, rng: np.random.Generator) -> Candidate:
        """Uniform per choice: depth, each sharing bit, the kind sequence and each op."""
        stages = [self._sample_stage(s, rng) for s in range(len(self.max_depths))]
        kinds = self.kind_sequences[int(rng.integers(len(self.kind_sequences)))]
        ops = tuple(self.ops[int(rng.integers(len(self.ops)))] for _ in range(self.num_pools))
        return Candidate(tuple(d for d, _ in stages), kinds, ops, tuple(sh for _, sh in stages))

    def largest(self) -> Candidate:
        """The base's depths, its pooling where it is in the space, no sharing."""
        kinds = self.base.pool_kinds if tuple(self.base.pool_kinds) in self.kind_sequences else self.kind_sequences[0]
        ops = tuple(o if o in self.ops else self.ops[0] for o in self.base.pool_ops)
        return Candidate(self.max_depths, kinds, ops, tuple(() for _ in self.max_depths))

    def smallest(self) -> Candidate:
        """One block per stage, the first kind sequence and op, no sharing."""
        return Candidate(tuple(1 for _ in self.max_depths), self.kind_sequences[0],
                         tuple(self.ops[0] for _ in range(self.num_pools)), tuple(() for _ in self.max_depths))

    def mutate(self, c: Candidate, rng: np.random.Generator, prob: float = 0.2) -> Candidate:
        """Re-draw each choice with probability ``prob`` (a changed depth keeps the sharing bits that still fit)."""
        depths, share = list(c.depths), [set(s) for s in c.share]
        for s in range(len(depths)):
            if rng.random() < prob:
                depths[s] = int(rng.integers(1, self.max_depths[s] + 1))
                share[s] = {p for p in share[s] if p < depths[s]}
            for p in range(1, depths[s]):
                if rng.random() < prob:
                    share[s] ^= {p}
        kinds = c.pool_kinds
        if rng.random() < prob:
            kinds = self.kind_sequences[int(rng.integers(len(self.kind_sequences)))]
        ops = tuple(self.ops[int(rng.integers(len(self.ops)))] if rng.random() < prob else o for o in c.pool_ops)
        return Candidate(tuple(depths), kinds, ops, tuple(tuple(sorted(s)) for s in share))

    def crossover(self, a: Candidate, b: Candidate, rng: np.random.Generator) -> Candidate:
        """Per stage (depth with its sharing) and per pooling op from either parent; kinds from one of them."""
        pick = [rng.random() < 0.5 for _ in a.depths]
        depths = tuple(x if p else y for x, y, p in zip(a.depths, b.depths, pick))
        share = tuple(x if p else y for x, y, p in zip(a.share, b.share, pick))
        kinds = a.pool_kinds if rng.random() < 0.5 else b.pool_kinds
        ops = tuple(x if rng.random() < 0.5 else y for x, y in zip(a.pool_ops, b.pool_ops))
        return Candidate(depths, kinds, ops, share)
