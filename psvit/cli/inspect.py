"""``psvit-export inspect FILE.onnx``: I/O, opset, ops, precision share, tokens, attention maps, metadata."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import app
from .console import console

_LONG = ("psvit.config", "psvit.versions", "psvit.fp16", "psvit.shared_attention", "psvit.verification",
         "psvit.class_names")


@app.command("inspect")
def inspect_command(
    file: Annotated[Path, typer.Argument(metavar="FILE.onnx", help="An .onnx file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Summarise an ONNX artifact."""
    from ..export import inspect_onnx

    s = inspect_onnx(file)
    if as_json:
        typer.echo(json.dumps(s.to_dict(), indent=2, default=str))  # plain: rich would wrap long lines
        return
    t = Table(title=str(file), show_header=False)
    t.add_row("size", f"{s.size_bytes / 1e6:.2f} MB" + (" (external data)" if s.external_data else ""))
    t.add_row("producer / opset", f"{s.producer} / " + ", ".join(f"{d} {v}" for d, v in s.opsets.items()))
    for kind, items in (("input", s.inputs), ("output", s.outputs)):
        for i in items:
            t.add_row(kind, f"{i.name} {i.dtype} {i.shape}")
    t.add_row("nodes", f"{s.nodes}: " + ", ".join(f"{k} {v}" for k, v in s.op_counts.items()))
    p = s.node_precision
    t.add_row("precision", f"fp16 {p['fp16']}, fp32 {p['fp32']} ({s.fp16_share:.0%} fp16), casts {p['cast']}, "
                           f"other {p['other']}")
    t.add_row("tokens per stage", " → ".join(map(str, s.tokens_per_stage)) or "-")
    t.add_row("attention maps", f"{s.attention_maps} Softmax, {s.shared_maps} shared by several A·V products")
    t.add_row("Q/DQ", f"{s.qdq['QuantizeLinear']} / {s.qdq['DequantizeLinear']}")
    t.add_row("shape ops", str(s.shape_ops))
    console.print(t)
    if s.metadata:
        m = Table(title="metadata", show_header=False)
        for key, value in s.metadata.items():
            text = value if isinstance(value, str) else json.dumps(value)
            if key in _LONG and len(text) > 160:
                text = text[:157] + "..."
            m.add_row(key, text)
        console.print(m)
