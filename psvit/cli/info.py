"""``psvit-export info [VARIANT]``: the variants table, or one variant in detail."""
from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from ..registry import get_config, list_models
from ..stats import model_stats
from . import app
from .console import console


def _fmt_count(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


@app.command()
def info(
    variant: Annotated[Optional[str], typer.Argument(help="A variant name; all variants when omitted.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Variants with params, MACs, tokens per stage and shared blocks."""
    names = [variant] if variant else list_models()
    stats = [model_stats(n) for n in names]
    if as_json:
        console.print_json(json.dumps([s.to_dict() for s in stats]))
        return
    if variant:
        s, cfg = stats[0], get_config(variant)
        table = Table(title=f"{variant}", show_header=False)
        for key, value in (
            ("params", f"{s.params:,} ({_fmt_count(s.params)})"),
            ("MACs / image", f"{s.macs:,} ({_fmt_count(s.macs)})"),
            ("input", f"{cfg.in_chans}x{cfg.img_size}x{cfg.img_size}, patch {cfg.patch_size}"),
            ("tokens per stage (with class token)", " -> ".join(map(str, s.tokens))),
            ("dims / depths / heads", f"{s.dims} / {s.depths} / {s.heads}"),
            ("pooling (kind/op)", s.pooling),
            ("shared blocks (global index)", ", ".join(map(str, s.shared_blocks)) or "none"),
            ("attention maps computed", str(s.attention_maps)),
            ("classes", str(cfg.num_classes)),
            ("mean / std", f"{cfg.mean} / {cfg.std}"),
            ("config", cfg.to_json()),
        ):
            table.add_row(key, value)
        console.print(table)
        return
    table = Table(title="PSViT variants (MACs at the input size, sharing on)", box=box.SIMPLE_HEAD)
    for col in ("variant", "input", "params", "GMACs", "tokens", "dims", "depths", "pooling", "shared"):
        table.add_column(col, justify="right" if col in ("params", "GMACs", "input") else "left",
                         no_wrap=col in ("variant", "params", "GMACs"))
    for s in stats:
        table.add_row(
            s.name, str(s.img_size), _fmt_count(s.params), f"{s.macs / 1e9:.3f}",
            "→".join(map(str, s.tokens)), "/".join(map(str, s.dims)), "/".join(map(str, s.depths)),
            s.pooling, ",".join(map(str, s.shared_blocks)) or "-",
        )
    console.print(table)
