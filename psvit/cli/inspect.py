"""``psvit-export inspect FILE``: an ONNX file's I/O, opset, ops, precision share, tokens, attention maps and
metadata (with ``--fusions``, what ONNX Runtime's optimizer fused and the time per op type); an engine's
sidecar."""
from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from .console import console

_LONG = ("psvit.config", "psvit.versions", "psvit.fp16", "psvit.shared_attention", "psvit.verification",
         "psvit.class_names")


class Provider(str, enum.Enum):
    """ONNX Runtime execution provider whose optimizer and kernels ``--fusions`` reports."""

    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


def _engine(file: Path, as_json: bool) -> None:
    """An engine: what its sidecar records (TensorRT itself needs a GPU to read the plan)."""
    from ..runtime.tensorrt import read_sidecar

    sc = read_sidecar(file)  # missing, corrupt or describing another plan: an error saying how to rebuild
    if as_json:
        typer.echo(json.dumps({"kind": "engine", "sidecar": sc.to_dict()}, indent=2, default=str))
        return
    t = Table(title=f"{file} (TensorRT engine; from its sidecar {file.name}.json)", show_header=False)
    t.add_row("builder", f"{sc.flavour} {sc.version}")
    t.add_row("built for", sc.device_name or f"ahead of time: compute capability "
                                             f"{', '.join(map(str, sc.target.get('compute_capabilities', [])))}")
    t.add_row("precision", sc.precision.upper())
    t.add_row("batch profile", ":".join(map(str, sc.batch)) if sc.batch else f"static {sc.static_shapes}")
    t.add_row("ONNX", f"{sc.onnx_path} (sha256 {sc.onnx_sha256[:12]}…)")
    t.add_row("source", str(sc.source.get("description")))
    t.add_row("size", f"{sc.engine_bytes / 1e6:.2f} MB")
    t.add_row("built at", f"{sc.built_at} in {sc.build_seconds:.1f} s")
    t.add_row("rebuild", sc.command)
    console.print(t)


@app.command("inspect")
def inspect_command(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="An .onnx file, or an engine (shows its sidecar).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    fusions: Annotated[bool, typer.Option(
        "--fusions", help="Load the graph in ONNX Runtime: the fusions its optimizer applied and the time per "
                          "op type.")] = False,
    provider: Annotated[Provider, typer.Option(help="With --fusions: the execution provider.")] = Provider.cpu,
    batch: Annotated[int, typer.Option(help="With --fusions: batch of the profiled runs.")] = 1,
    runs: Annotated[int, typer.Option(help="With --fusions: profiled runs (0: fusions only).")] = 10,
    threads: Annotated[int, typer.Option(help="With --fusions: intra-op threads (0: ONNX Runtime's).")] = 0,
) -> None:
    """Summarise an ONNX artifact (or an engine, from its sidecar)."""
    from ..artifacts import ArtifactKind, detect_artifact
    from ..export import inspect_onnx

    if file.is_file() and detect_artifact(file).kind is ArtifactKind.ENGINE:
        return _engine(file, as_json)
    s = inspect_onnx(file)
    report = None
    if fusions:
        from ..export.fusions import onnxruntime_fusions

        report = onnxruntime_fusions(file, providers=[provider.value], threads=threads or None, batch=batch,
                                     runs=runs)
    if as_json:
        data: dict[str, Any] = s.to_dict()
        if report is not None:
            data["fusions"] = report.to_dict()
        typer.echo(json.dumps(data, indent=2, default=str))  # plain: rich would wrap long lines
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
    if report is not None:
        _print_fusions(report)


def _print_fusions(report: Any) -> None:  # FusionReport
    from ..export.fusions import FUSED_OPS

    f = Table(title=f"ONNX Runtime optimizer ({', '.join(report.providers)}): fused ops")
    for col in ("fused op", "nodes", "replaces"):
        f.add_column(col, justify="right" if col == "nodes" else "left")
    for op, n in report.fused.items():
        f.add_row(op, str(n), FUSED_OPS[op])
    console.print(f)
    removed = ", ".join(f"{op} {n}" for op, n in report.removed.items()) or "none"
    console.print(f"nodes removed by the optimizer: {removed}", markup=False)
    if report.expected:
        verdict = "[green]every expected fusion fired[/]" if not report.problems else \
            "[red]" + escape("; ".join(report.problems)) + "[/]"
        console.print(f"PSViT fusion checks: {verdict}")
    if report.time_by_op:
        p = Table(title=f"time by op type, batch {report.batch}, {report.runs} profiled runs")
        for col in ("op type", "ms per run", "calls", "share"):
            p.add_column(col, justify="left" if col == "op type" else "right")
        for op, v in report.time_by_op.items():
            p.add_row(op, f"{v['ms_per_run']:.3f}", f"{v['calls_per_run']:g}", f"{v['share']:.1%}")
        console.print(p)
