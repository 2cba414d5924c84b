"""Plots of a benchmark report: latency and throughput vs batch size (needs the ``plot`` extra)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import require
from ..outputs import Output, OutputKind, check_output
from ..provenance import atomic_output
from .bench import BenchReport


def plot_report(report: BenchReport, path: str | os.PathLike, phase: str = "end_to_end") -> Path:
    """Two panels — median latency (p90..p99 band) and throughput vs batch — one line per target."""
    require("matplotlib", "'psvit-deploy[plot]'", "benchmark plots")
    path = check_output(Output(path, OutputKind.PLOT, "the plot"))  # a format matplotlib writes, before drawing
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for t in report.targets:
        bs = sorted(t.batches)
        stats = [t.batches[b][phase] for b in bs]
        line, = ax_lat.plot(bs, [s.median_ms for s in stats], marker="o", label=t.description)
        ax_lat.fill_between(bs, [s.p90_ms for s in stats], [s.p99_ms for s in stats], color=line.get_color(),
                            alpha=0.2)
        ax_thr.plot(bs, [s.throughput for s in stats], marker="o", color=line.get_color(), label=t.description)
    for ax, label in ((ax_lat, "latency, median ms (band: p90..p99)"), (ax_thr, "throughput, images/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    ax_lat.set_yscale("log")
    ax_thr.legend(fontsize=7, loc="best")
    gpu = report.machine.get("gpu")
    fig.suptitle(f"{phase.replace('_', '-')} latency on {gpu or report.machine.get('processor', 'this machine')}")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Save ``fig`` (format from the suffix, PNG by default) and close it; a failed save leaves no file."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_output(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=120, format=path.suffix[1:].lower() or "png")
    finally:
        plt.close(fig)
    return path
