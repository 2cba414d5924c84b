"""Search under a latency budget: evolutionary (or exhaustive when the space is small), with a Pareto front.

Fitness is the supernet-inherited held-out accuracy; a candidate is feasible when its predicted latency is
within the budget, and only feasible candidates are evaluated. Evolution (as in single-path one-shot NAS):
a random feasible first population, then each generation half mutants and half crossovers of the top half
of everything evaluated so far, de-duplicated, the population being the best ``population`` so far. The
state (everything evaluated, the population, the random stream) is saved after every generation, so an
interrupted search continues with the same draws and ends with the same front.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..provenance import atomic_output
from .space import Candidate, SearchSpace

Log = Callable[[str], None]
Checkpointed = Callable[[str, int], None]
MAX_DRAWS = 50  # draws per wanted child before a generation gives up on filling itself


@dataclass
class Evaluated:
    candidate: Candidate
    accuracy: float
    predicted_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate.to_dict(), "accuracy": self.accuracy, "predicted_ms": self.predicted_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Evaluated":
        return cls(Candidate.from_dict(d["candidate"]), float(d["accuracy"]), float(d["predicted_ms"]))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats (lower-or-equal latency and higher
    accuracy, or lower latency and equal accuracy), ordered by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


class Evolution:
    """The search loop; ``accuracy(c)`` and ``latency(c)`` score a candidate (deterministically)."""

    def __init__(self, space: SearchSpace, accuracy: Callable[[Candidate], float],
                 latency: Callable[[Candidate], float], budget_ms: float, population: int, generations: int,
                 seed: int, mutation_prob: float = 0.2) -> None:
        self.space, self.accuracy, self.latency = space, accuracy, latency
        self.budget_ms, self.population, self.generations = budget_ms, population, generations
        self.seed, self.mutation_prob = seed, mutation_prob
        self.exhaustive = space.size() <= population * generations

    @property
    def method(self) -> str:
        return "exhaustive" if self.exhaustive else "evolutionary"

    # ---- state ----------------------------------------------------------------------------------
    def _fresh_state(self) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, 2])
        return {"method": self.method, "generation": 0, "archive": [], "population": [],
                "rng": rng.bit_generator.state, "draws": 0}

    @staticmethod
    def _save(path: Path, state: dict[str, Any]) -> None:
        with atomic_output(path, suffix=".json") as tmp:
            tmp.write_text(json.dumps(state, indent=1))

    # ---- one generation -------------------------------------------------------------------------
    def _children(self, rng: np.random.Generator, archive: dict[str, Evaluated], want: int) -> list[Candidate]:
        """New feasible candidates: random ones in generation 0, else mutants and crossovers of the top half."""
        parents = sorted(archive.values(), key=lambda e: (-e.accuracy, e.predicted_ms, e.candidate.key))
        parents = [e.candidate for e in parents[: max(2, self.population // 2)]]
        out: dict[str, Candidate] = {}
        for _ in range(want * MAX_DRAWS):
            if len(out) >= want:
                break
            if not parents:
                c = self.space.sample(rng)
            elif len(out) < want // 2 or len(parents) < 2:
                c = self.space.mutate(parents[int(rng.integers(len(parents)))], rng, self.mutation_prob)
            else:
                i, j = rng.choice(len(parents), size=2, replace=False)
                c = self.space.mutate(self.space.crossover(parents[int(i)], parents[int(j)], rng), rng,
                                      self.mutation_prob / 2)
            if c.key in archive or c.key in out or self.latency(c) > self.budget_ms:
                continue
            out[c.key] = c
        return list(out.values())

    def run(self, state_path: Path, *, log: Log | None = None, on_checkpoint: Checkpointed | None = None
            ) -> dict[str, Any]:
        """Run (or continue, from ``state_path``) and return the final state with the Pareto front."""
        say = log or (lambda _m: None)
        state = json.loads(state_path.read_text()) if state_path.is_file() else self._fresh_state()
        archive = {e.candidate.key: e for e in map(Evaluated.from_dict, state["archive"])}
        if state["generation"]:
            say(f"search: resuming after generation {state['generation']}/{self._rounds()}")
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        all_candidates = list(self.space.enumerate()) if self.exhaustive else None
        while state["generation"] < self._rounds():
            g = state["generation"]
            if all_candidates is not None:  # exhaustive: the next slice of the space, feasible ones only
                chunk = all_candidates[g * self.population:(g + 1) * self.population]
                new = [c for c in chunk if self.latency(c) <= self.budget_ms]
            else:
                new = self._children(rng, archive, self.population)
            for c in new:
                archive[c.key] = Evaluated(c, self.accuracy(c), self.latency(c))
            ranked = sorted(archive.values(), key=lambda e: (-e.accuracy, e.predicted_ms, e.candidate.key))
            state.update(generation=g + 1, archive=[e.to_dict() for e in archive.values()],
                         population=[e.candidate.key for e in ranked[: self.population]], rng=rng.bit_generator.state)
            best = ranked[0] if ranked else None
            say(f"search {self.method} {g + 1}/{self._rounds()}: {len(new)} new, {len(archive)} evaluated"
                + (f", best {best.accuracy:.1%} at {best.predicted_ms:.3g} ms (predicted)" if best else ""))
            self._save(state_path, state)
            if on_checkpoint is not None:
                on_checkpoint("search", g + 1)
        evaluated = [Evaluated.from_dict(d) for d in state["archive"]]
        state["pareto"] = pareto_front([(e.predicted_ms, e.accuracy) for e in evaluated])
        return state

    def _rounds(self) -> int:
        if self.exhaustive:
            return -(-self.space.size() // self.population)
        return self.generations
