"""``psvit-export compare A B``: the same inputs through two artifacts (checkpoint, demo, variant, ONNX)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from . import app
from .console import console, err_console


@app.command("compare")
def compare_command(
    a: str = typer.Argument(..., metavar="A", help="Reference: .onnx, checkpoint, 'demo' or variant name."),
    b: str = typer.Argument(..., metavar="B", help="Candidate: same kinds as A."),
    data: Optional[Path] = typer.Option(None, help="Image folder or .npy/.npz of preprocessed images "
                                                   "(default: random images)."),
    count: int = typer.Option(8, help="Number of samples (random, or at most this many from --data)."),
    variant: Optional[str] = typer.Option(None, help="Architecture of .pth state dicts without a config."),
    seed: int = typer.Option(0, help="Seed of random weights (variant names) and random samples."),
    max_rel_error: Optional[float] = typer.Option(
        None, help="Fail (exit 2) when the relative L2 error of any output exceeds this."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON."),
) -> None:
    """Relative L2 error, max abs error, cosine similarity and top-1 agreement, per output."""
    from ..export.inputs import sample_inputs
    from ..export.runners import open_artifact
    from ..export.verify import compare, require_close
    from ..provenance import atomic_output, check_output_folder

    if json_out is not None:
        check_output_folder(json_out)  # before loading and running both artifacts
    ref = open_artifact(a, variant=variant, seed=seed)
    cand = open_artifact(b, variant=variant, seed=seed)
    for r in (ref, cand):
        if getattr(getattr(r, "source", None), "random_weights", False):
            err_console.print(f"[bold yellow]WARNING: {r.name}[/]", highlight=False)
    inputs = sample_inputs(data, count=count, input_shape=ref.input_shape,
                           preprocess=ref.preprocess or cand.preprocess, seed=seed)
    result = compare(ref, cand, inputs, max_rel_l2=max_rel_error)
    table = Table(title=f"A: {ref.name}\nB: {cand.name}\n{result.samples} samples "
                        f"({'random images' if data is None else data})")
    for col in ("output", "rel L2 error", "max abs error", "cosine", "top-1 agreement"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for o in result.outputs:
        table.add_row(o.name, f"{o.rel_l2:.3e}", f"{o.max_abs:.3e}", f"{o.cosine:.6f}",
                      "-" if o.top1_agreement is None else f"{o.top1_agreement:.1%}")
    console.print(table)
    if json_out is not None:
        with atomic_output(json_out, suffix=".json") as tmp:
            tmp.write_text(json.dumps(result.to_dict(), indent=2))
    require_close(result, "B vs A")
