"""``psvit-export onnx SOURCE --out FILE``: export to ONNX (FP32/FP16) and verify against PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from . import app
from .console import console, format_bytes, note, warn
from .options import JsonOpt, SharedAttention, VariantOpt, deprecated_alias


@app.command("onnx")
def onnx_command(
    source: Annotated[str, typer.Argument(
        metavar="SOURCE", help="Checkpoint (.safetensors; .pth needs --variant), 'demo', or a variant name "
                               "(random weights).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .onnx file.")],
    variant: VariantOpt = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16-typed graph (LayerNorm and overflowing nodes "
                                                      "FP32).")] = False,
    fp16_io: Annotated[bool, typer.Option("--fp16-io", help="With --fp16: FP16 inputs/outputs too "
                                                            "[default: FP32].")] = False,
    batch: Annotated[str, typer.Option(help="'dynamic' or a fixed positive batch size.")] = "dynamic",
    shared_attention: Annotated[SharedAttention, typer.Option(
        help="Shared maps as probabilities (map), as Q/K (qk), or per stage by token count (auto).")
    ] = SharedAttention.map,
    qk_min_tokens: Annotated[Optional[int], typer.Option(
        help="With --shared-attention auto: stages with at least this many tokens use qk "
             "[default: 33, measured on an H200].")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17 or newer; 20+ has the Gelu op).")] = 20,  # = DEFAULT_OPSET
    data: Annotated[Optional[Path], typer.Option(
        help="Verification/FP16-range samples: image folder or .npy/.npz [default: random images].")] = None,
    count: Annotated[int, typer.Option(help="Number of verification samples.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of random weights (variant sources) and random samples.")] = 0,
    verify_strict: Annotated[bool, typer.Option(
        "--verify-strict/--no-verify-strict",
        help="Fail (and write nothing) when a graph check or the verification fails; "
             "--no-verify-strict keeps the file and warns.")] = True,
    json_out: JsonOpt = None,
    report_old: Annotated[Optional[Path], typer.Option("--report", hidden=True)] = None,
) -> None:
    """Export to ONNX with static token counts, check the graph and verify it against PyTorch."""
    from ..export import export_onnx
    from ..outputs import Output, OutputKind, check_outputs
    from ..provenance import write_json

    report = deprecated_alias("--report", "--json", report_old, json_out)
    check_outputs([Output(out, OutputKind.ONNX), Output(report, OutputKind.JSON, "--json")],  # before the export
                  inputs=[source, data])
    result = export_onnx(
        source, out, variant=variant, fp16=fp16, fp16_io=fp16_io, batch=batch,
        shared_attention=shared_attention.value, qk_min_tokens=qk_min_tokens, opset=opset, data=data, count=count,
        strict=verify_strict, seed=seed, log=note,
    )
    src = result.source
    if src.random_weights:
        warn(f"{src.description}. The ONNX file records this (psvit.random_weights=true).", "WARNING:")
    table = Table(title=f"exported {result.path}", show_header=False)
    table.add_row("source", src.description + (f" (sha256 {src.sha256[:12]}…)" if src.sha256 else ""))
    table.add_row("size", format_bytes(result.size_bytes) + (f" + external data {result.external_data}"
                                                          if result.external_data else ""))
    io = f", I/O {result.io_precision}" if result.precision == "fp16" else ""
    table.add_row("precision", f"{result.precision}{io}")
    table.add_row("batch / opset", f"{'dynamic' if result.batch is None else result.batch} / {result.opset}")
    plan = result.sharing
    stages = ", ".join(
        f"{n} tok: {m or '-'}" for n, m in zip(plan.tokens, plan.effective_modes())
    )
    rule = f" (qk when tokens >= {plan.qk_min_tokens})" if plan.qk_min_tokens else ""
    table.add_row("shared attention", f"{plan.requested}{rule} → {stages}")
    g = result.graph
    table.add_row("graph", f"{g.nodes} nodes, {g.softmax} Softmax (expected {g.expected_softmax}), "
                           f"{sum(g.shape_ops.values())} shape ops, {len(g.symbolic_dims)} non-batch symbolic "
                           f"tensors, {len(g.duplicated_initializers)} duplicated initializers")
    p = g.patterns
    table.add_row("fusable patterns", f"{p['bias_gelu']}/{p['gelu']} GELU with their bias, {p['qk_scaled']}/"
                                      f"{p['softmax']} scaled Q·Kᵀ (psvit-export inspect --fusions: what ORT fused)")
    if result.fp16 is not None:
        f = result.fp16
        table.add_row("fp16 kept in fp32", f"ops {', '.join(f.kept_fp32_ops)}; {len(f.overflow_nodes)} overflowing "
                                          f"node(s) (> {f.overflow_threshold:.0f}); "
                                          f"{len(f.shape_arithmetic_nodes)} shape-arithmetic node(s)")
    for c in result.verification:
        top1 = f", top-1 agreement {c.top1_agreement:.1%}" if c.top1_agreement is not None else ""
        mark = "[green]pass[/]" if c.passed else "[red]FAIL[/]"
        table.add_row(f"verify: {c.candidate}", f"{mark} rel L2 {c.worst_rel_l2:.2e} (≤ {c.max_rel_l2:g}){top1}, "
                                                 f"{c.samples} samples")
    table.add_row("time", ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))
    console.print(table)
    for w in result.warnings:
        warn(w)
    if report is not None:
        write_json(report, result.to_dict())
