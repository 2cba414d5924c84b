"""``psvit-export triton ARTIFACT... --repo DIR``: a Triton model repository a stock server loads."""
from __future__ import annotations

import enum
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from .console import console, err_console


class InstanceKind(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


def parse_sizes(text: str | None, option: str) -> list[int]:
    """``"4,8"`` -> [4, 8]; None or empty -> []."""
    from ..serve.errors import ServeError

    if not text:
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ServeError(f"{option} takes comma-separated positive integers (4,8), got {text!r}") from None
    if any(v < 1 for v in values):
        raise ServeError(f"{option} takes comma-separated positive integers (4,8), got {text!r}")
    return values


@app.command("triton")
def triton_command(
    artifacts: Annotated[list[Path], typer.Argument(
        metavar="ARTIFACT...", help="ONNX files and engines (engines need their .json sidecar).")],
    repo: Annotated[Path, typer.Option("--repo", help="Model repository folder (created if missing).")],
    name: Annotated[Optional[str], typer.Option(
        help="Model name (default psvit); with several artifacts, the prefix of NAME_STEM.")] = None,
    max_batch: Annotated[Optional[int], typer.Option(
        "--max-batch", help="max_batch_size (default: the engine profile's max; 32 for ONNX).")] = None,
    max_queue_delay_us: Annotated[int, typer.Option(
        "--max-queue-delay-us", help="Dynamic batcher: longest wait for a fuller batch (µs).")] = 1000,
    preferred_batch: Annotated[Optional[str], typer.Option(
        "--preferred-batch", help="Dynamic batcher's preferred batch sizes, comma-separated (4,8).")] = None,
    instances: Annotated[int, typer.Option(help="Model instances per device (instance_group count).")] = 1,
    kind: Annotated[InstanceKind, typer.Option(
        help="Instance kind of the model: auto = GPU for engines, CPU for ONNX.")] = InstanceKind.auto,
    topk: Annotated[int, typer.Option(help="Classes returned by the NAME_image ensemble.")] = 5,
    no_image_models: Annotated[bool, typer.Option(
        "--no-image-models", help="Leave out the preprocessing/top-k Python models and the NAME_image "
        "ensemble (they need Pillow in the server's Python).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace model folders that exist.")] = False,
) -> None:
    """Write a Triton model repository: config.pbtxt from the artifact, labels, provenance, image ensemble."""
    from ..serve.repository import write_repository

    command = shlex.join(["psvit-export", "triton", *sys.argv[2:]]) if sys.argv[1:2] == ["triton"] else None
    result = write_repository(
        [str(a) for a in artifacts], repo, name=name, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
        instances=instances, preferred_batch=parse_sizes(preferred_batch, "--preferred-batch"), kind=kind.value,
        topk=topk, image_models=not no_image_models, force=force, command=command,
    )
    table = Table(title=f"Triton model repository {escape(str(result.path))}")
    for col in ("model", "from", "platform", "input", "output", "max batch", "image model"):
        table.add_column(col, justify="right" if col == "max batch" else "left")
    for m in result.models:
        f = m.facts
        table.add_row(
            m.name, escape(m.artifact.name), "tensorrt_plan" if f.kind == "engine" else "onnxruntime",
            f"{f.input.name} {f.input.data_type[5:]} {list(f.input.dims)}",
            f"{f.output.name} {f.output.data_type[5:]} {list(f.output.dims)}", str(m.max_batch),
            f"{m.name}_image" if "image" in m.folders else "-",
        )
    console.print(table)
    for note in result.notes:
        err_console.print(f"[bold yellow]note:[/] {escape(note)}", highlight=False)
    err_console.print(f"serve it: tritonserver --model-repository {escape(str(result.path.resolve()))}",
                      highlight=False)
