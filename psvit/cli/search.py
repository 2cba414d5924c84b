"""``psvit-export search``: hardware-aware search over the compact set around a variant (see psvit.search)."""
from __future__ import annotations

import enum
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from . import app
from .console import console, err_console


class SearchBackend(str, enum.Enum):
    """Where latency is measured: no 'auto' (the search needs one fixed target)."""

    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"
    torch = "torch"


class Device(str, enum.Enum):
    cpu = "cpu"
    cuda = "cuda"


class SearchSharing(str, enum.Enum):
    """One export mode for every candidate: no 'auto'."""

    map = "map"
    qk = "qk"


class WinnerInit(str, enum.Enum):
    scratch = "scratch"
    inherit = "inherit"


@app.command("search")
def search_command(
    base: Annotated[str, typer.Option("--base", help="Variant whose compact set is searched.")],
    data: Annotated[str, typer.Option(
        "--data", help="Image folder (one subfolder per class) or 'synthetic'.")],
    latency_budget_ms: Annotated[float, typer.Option(
        "--latency-budget-ms", help="Latency budget per batch on the target, ms.")],
    out: Annotated[Path, typer.Option(
        "--out", help="Search folder: created, or resumed when it holds this search.")],
    backend: Annotated[SearchBackend, typer.Option(
        help="Runtime the latency is measured on.")] = SearchBackend.onnxruntime,
    device: Annotated[Device, typer.Option(help="Device of the target.")] = Device.cpu,
    batch: Annotated[int, typer.Option(help="Batch size the latency is measured at.")] = 1,
    shared_attention: Annotated[SearchSharing, typer.Option(
        help="How sharing blocks are exported (latency).")] = SearchSharing.map,
    supernet_epochs: Annotated[int, typer.Option(help="Supernet training epochs.")] = 20,
    population: Annotated[int, typer.Option(help="Candidates per generation.")] = 20,
    generations: Annotated[int, typer.Option(help="Generations of the evolution.")] = 10,
    seed: Annotated[int, typer.Option(help="Seeds the data split, weights, sampling and search.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of each class held out for ranking.")] = 0.2,
    synthetic_count: Annotated[Optional[int], typer.Option(
        help="Images for --data synthetic (default 8000).")] = None,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 1e-3,
    threads: Annotated[Optional[int], typer.Option(
        help="CPU threads for training and timing (default: the libraries').")] = None,
    winner_epochs: Annotated[Optional[int], typer.Option(
        help="Epochs for the chosen model (default: --supernet-epochs).")] = None,
    winner_init: Annotated[WinnerInit, typer.Option(
        help="Train the chosen model from scratch or fine-tune inherited weights.")] = WinnerInit.scratch,
    calibration_size: Annotated[Optional[int], typer.Option(
        help="Candidates measured to fit the latency model (default: 1.5x its unknowns).")] = None,
    eval_images: Annotated[Optional[int], typer.Option(
        help="Held-out images that rank candidates (default: all).")] = None,
    train_device: Annotated[Device, typer.Option(help="Device that trains the supernet and the winner.")] = Device.cpu,
    supernet_init: Annotated[Optional[str], typer.Option(
        help="Warm-start the supernet from a trained checkpoint of the base (or 'demo').")] = None,
    supernet_lr: Annotated[Optional[float], typer.Option(
        help="Supernet learning rate (default: --lr).")] = None,
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write pareto.png.")] = True,
) -> None:
    """Search pooling and sharing under a latency budget measured on the target."""
    from ..preprocessing import Preprocess
    from ..registry import get_config
    from ..search.errors import SearchError
    from ..search.latency import LatencyTarget
    from ..search.pipeline import SearchSettings, prepare_output_path, require_plot, run_search
    from .train import SYNTHETIC, load_training_data

    target = LatencyTarget(backend=backend.value, device=device.value, batch=batch, threads=threads,
                           shared_attention=shared_attention.value)
    settings = SearchSettings(
        base=base, latency_budget_ms=latency_budget_ms, target=target, supernet_epochs=supernet_epochs,
        population=population, generations=generations, seed=seed, val_fraction=val_fraction,
        batch_size=batch_size, lr=lr, hflip=data == SYNTHETIC, threads=threads, winner_epochs=winner_epochs,
        winner_init=winner_init.value, calibration_size=calibration_size, eval_images=eval_images,
        train_device=train_device.value, supernet_init=supernet_init, supernet_lr=supernet_lr,
    )
    prepare_output_path(out)  # before loading data and minutes of work
    if plot:
        require_plot()
    if synthetic_count is not None and synthetic_count < 20:
        raise SearchError(f"--synthetic-count must be at least 20 (2 per class), got {synthetic_count}")
    cfg = get_config(base)
    dataset = load_training_data(data, synthetic_count, seed, Preprocess.from_config(cfg))
    # sys.argv is this command only when run from the shell (not through psvit.cli.main([...]) in Python)
    command = shlex.join(["psvit-export", "search", *(sys.argv[2:] if sys.argv[1:2] == ["search"] else [])])
    record = run_search(settings, dataset, out, command=command, plot=plot,
                        log=lambda m: err_console.print(m, highlight=False, markup=False))

    best = record["candidates"][record["best"]]
    ref = record["reference"]
    table = Table(title=f"search around {base}: {record['search']['evaluated']} candidates evaluated, "
                        f"{len(record['pareto'])} on the front", show_header=True)
    for col in ("candidate", "depths", "pooling", "shared blocks", "latency ms", "source", "supernet top-1",
                "stand-alone top-1"):
        table.add_column(col, justify="left" if col in ("candidate", "pooling", "depths", "shared blocks") else "right")
    for i in record["pareto"]:
        c = record["candidates"][i]
        cfg_d = c["config"]
        table.add_row(
            f"{i}{' (chosen)' if i == record['best'] else ''}", "/".join(map(str, cfg_d["depths"])),
            ", ".join(f"{k}/{o}" for k, o in zip(cfg_d["pool_kinds"], cfg_d["pool_ops"])),
            ",".join(map(str, cfg_d["share"])) or "-", f"{c['latency_ms']:.3g}", c["latency_source"],
            f"{c['accuracy']:.1%}", f"{c['standalone_accuracy']:.1%}" if "standalone_accuracy" in c else "-")
    if ref.get("accuracy") is not None:
        table.add_row(f"{base} (base)", "/".join(map(str, ref["config"]["depths"])), "", "", f"{ref['latency_ms']:.3g}",
                      "measured", f"{ref['accuracy']:.1%}", "-")
    console.print(table)
    console.print(f"chosen candidate {record['best']}: {best['latency_ms']:.3g} ms on {target.describe()} "
                  f"(budget {latency_budget_ms:g}); checkpoint {out / record['winner']['checkpoint']}; "
                  f"results {out / 'search.json'}", highlight=False)
