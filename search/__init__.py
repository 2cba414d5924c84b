"""Hardware-aware search over PSViT's compact set: pooling and sharing learned from data under a latency
budget measured on the deployment target.

space (candidates) -> supernet (one-shot weights) -> latency (measured on the target, and a model of it)
-> evolution (Pareto front under the budget) -> pipeline (resumable run, winner retrained, results).
"""
from __future__ import annotations

from .errors import BudgetError, SearchError
from .space import Candidate, SearchSpace
from .supernet import Supernet, SubnetView

__all__ = ["Candidate", "SearchSpace", "Supernet", "SubnetView", "SearchError", "BudgetError"]
