"""The load generator's plot: throughput against p99 latency, one point per concurrency (perf_analyzer's curve)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import require
from ..runtime.plots import save_figure


Series = Sequence[tuple[str, Sequence[Any]]]  # (label, levels: LevelResult or their dicts)


def plot_sweeps(series: Series, path: str | os.PathLike, title: str = "") -> Path:
    """One line per ``(label, levels)``: x p99 latency, y throughput, points labelled with the concurrency."""
    return plot_panels([(title or "throughput vs p99 latency per concurrency level", series)], path)


def plot_panels(panels: Sequence[tuple[str, Series]], path: str | os.PathLike) -> Path:
    """:func:`plot_sweeps` side by side, one panel per ``(title, series)``."""
    require("matplotlib", "'psvit-deploy[plot]'", "load test plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def get(level: Any, key: str) -> Any:
        return level[key] if isinstance(level, dict) else getattr(level, key)

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for label, levels in series:
            xs = [get(lv, "latency")["p99_ms"] for lv in levels]
            ys = [get(lv, "throughput") for lv in levels]
            line, = ax.plot(xs, ys, marker="o", label=label)
            for lv, x, y in zip(levels, xs, ys):
                ax.annotate(f"c={get(lv, 'concurrency')}", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("p99 latency, ms (client)")
        ax.set_ylabel("throughput, inferences/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
