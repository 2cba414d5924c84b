"""Errors of the architecture search; all are :class:`psvit.errors.PSViTError`, so the CLI prints them
without a traceback and exits 2."""
from __future__ import annotations

from ..errors import PSViTError


class SearchError(PSViTError):
    """A search that cannot run as asked: a bad budget or option, or a folder holding another search."""


class BudgetError(SearchError):
    """A latency budget that no candidate of the search space meets on the chosen target."""
