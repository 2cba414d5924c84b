"""``psvit-export data synthetic``: write the procedural image-folder dataset."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..data.synthetic import NUM_CLASSES, check_output_folder, write_synthetic
from . import app
from .console import console, err_console

data_app = typer.Typer(help="Datasets: generate the synthetic image folder.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synthetic")
def synthetic(
    out: Annotated[Path, typer.Option("--out", help="Folder to create (one subfolder per class + dataset.json).")],
    count: Annotated[int, typer.Option("--count", min=1, help="Number of images (classes are balanced).")],
    seed: Annotated[int, typer.Option("--seed", help="Same seed and count give byte-identical files.")],
    size: Annotated[int, typer.Option("--size", min=8, help="Image side in pixels.")] = 32,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it is not empty.")] = False,
) -> None:
    """Generate the procedural shapes-and-textures dataset as an image folder."""
    check_output_folder(out, force)
    start = time.perf_counter()
    with Progress(
        TextColumn("writing images"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True,
    ) as bar:
        task = bar.add_task("write", total=count)
        path = write_synthetic(out, count, seed, size, overwrite=force, on_image=lambda _: bar.advance(task))
    console.print(
        f"wrote {count} images ({NUM_CLASSES} classes, {size}x{size}, seed {seed}) to {path} "
        f"in {time.perf_counter() - start:.1f}s",
        highlight=False,
    )
