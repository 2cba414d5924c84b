"""``psvit-export compare A B``: the same inputs through two artifacts (checkpoint, demo, variant, ONNX,
engine), each run by :mod:`psvit.runtime`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from . import app
from .console import console, warn
from .options import JsonOpt, VariantOpt


def _open(spec: str, variant: str | None, seed: int) -> Any:
    """The runtime of one artifact; ``variant`` and ``seed`` apply to PyTorch artifacts only."""
    from ..artifacts import detect_artifact
    from ..runtime import load

    torch_options = {"variant": variant, "seed": seed} if detect_artifact(spec).backend == "torch" else {}
    return load(spec, **torch_options)


@app.command("compare")
def compare_command(
    a: Annotated[str, typer.Argument(metavar="A", help="Reference: .onnx, engine, checkpoint, 'demo' or variant "
                                                      "name.")],
    b: Annotated[str, typer.Argument(metavar="B", help="Candidate: same kinds as A.")],
    data: Annotated[Optional[Path], typer.Option(
        help="Image folder or .npy/.npz of preprocessed images [default: random images].")] = None,
    count: Annotated[int, typer.Option(help="Number of samples (random, or at most this many from --data).")] = 8,
    variant: VariantOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of random weights (variant names) and random samples.")] = 0,
    max_rel_error: Annotated[Optional[float], typer.Option(
        help="Fail (exit 2) when the relative L2 error of any output exceeds this.")] = None,
    json_out: JsonOpt = None,
) -> None:
    """Relative L2 error, max abs error, cosine similarity and top-1 agreement, per output."""
    from ..export.inputs import sample_inputs
    from ..export.verify import compare, require_close
    from ..errors import PSViTError
    from ..outputs import Output, OutputKind, check_outputs
    from ..provenance import write_json

    if max_rel_error is not None and not max_rel_error > 0:
        raise PSViTError(f"--max-rel-error must be a positive number (e.g. 1e-3), got {max_rel_error:g}")
    if count < 1:
        raise PSViTError(f"--count must be at least 1, got {count}")
    check_outputs([Output(json_out, OutputKind.JSON, "--json")], inputs=[a, b, data])  # before running both
    ref = _open(a, variant, seed)
    cand = _open(b, variant, seed)
    for r in (ref, cand):
        if r.backend.metadata.get("random_weights"):
            warn(f"{r.name} has RANDOM WEIGHTS (a variant name, not a trained model)", "WARNING:")
    inputs = sample_inputs(data, count=count, input_shape=ref.input_shape,
                           preprocess=ref.backend.preprocess or cand.backend.preprocess, seed=seed)
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
        write_json(json_out, result.to_dict())
    require_close(result, "B vs A")
