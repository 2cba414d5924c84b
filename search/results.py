"""The search's outputs: ``search.json`` (every evaluated candidate, the Pareto front, the winner, the target
and versions) and ``pareto.png`` (accuracy vs latency; needs the ``plot`` extra)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import require
from ..runtime.plots import save_figure

FORMAT = "psvit-search/1"


def plot_pareto(record: dict[str, Any], path: str | os.PathLike) -> Path:
    """Supernet accuracy vs latency of every evaluated candidate; the front, the budget, the winner, the base."""
    require("matplotlib", "'psvit-deploy[plot]'", "the Pareto plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = record["candidates"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pred = [c for c in cands if c["latency_source"] == "predicted"]
    meas = [c for c in cands if c["latency_source"] == "measured"]
    ax.scatter([c["latency_ms"] for c in pred], [c["accuracy"] for c in pred], s=10, alpha=0.4, color="tab:gray",
               label="evaluated (predicted latency)")
    ax.scatter([c["latency_ms"] for c in meas], [c["accuracy"] for c in meas], s=14, color="tab:blue",
               label="evaluated (measured latency)")
    front = sorted((cands[i] for i in record["pareto"]), key=lambda c: c["latency_ms"])
    ax.plot([c["latency_ms"] for c in front], [c["accuracy"] for c in front], "-o", color="tab:orange", ms=4,
            label="Pareto front (measured)")
    if record.get("best") is not None:
        b = cands[record["best"]]
        ax.scatter([b["latency_ms"]], [b["accuracy"]], marker="*", s=220, color="tab:red", zorder=5, label="chosen")
    ref = record.get("reference")
    if ref and ref.get("latency_ms") is not None and ref.get("accuracy") is not None:
        ax.scatter([ref["latency_ms"]], [ref["accuracy"]], marker="D", s=50, color="black", zorder=5,
                   label=f"{record['base']} (base)")
    ax.axvline(record["latency_budget_ms"], color="tab:red", ls="--", lw=1, label="budget")
    t = record["target"]
    ax.set_xlabel(f"latency, ms ({t['backend']} {t['device']}, batch {t['batch']})")
    ax.set_ylabel("held-out top-1, supernet weights")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"search around {record['base']}: {len(cands)} candidates, {len(record['pareto'])} on the front")
    fig.tight_layout()
    return save_figure(fig, path)
