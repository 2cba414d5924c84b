"""What a backend makes of an exported graph: the fusions its optimizer applied, what it left unfused, and
the time per op type (``psvit-export inspect --fusions``), and the checks that fail when fusions stop firing.

ONNX Runtime rewrites a graph when it creates a session (``ORT_ENABLE_ALL``): ``Add(bias) → Gelu`` becomes
``BiasGelu``, a scale and a transpose around a MatMul become one ``FusedMatMul``, ``MatMul + Add`` on a
static 2-D input a ``Gemm``, Q/DQ around a GEMM an integer kernel. The graph after optimization is saved
through ``psvit.runtime.load(..., optimized_model_path=...)`` and compared with the file op type by op type;
the same session's profiler gives the time per op type.

Expectations for a PSViT graph (:func:`fusion_problems`) come from its ``psvit.config``: one fused GELU per
MLP and no ``Erf`` left (an unfused GELU costs 4-5 element-wise passes over the MLP's widest activation),
the bias of ``fc1`` folded into it, and every Q·Kᵀ product a ``FusedMatMul`` with the softmax scale folded
in (no separate Mul over Q). FP16 graphs are meant for GPUs: ONNX Runtime's CPU provider has no FP16
GELU/Softmax kernels and decomposes them, so there only the graph's own patterns are checked
(:func:`.graph_checks.fusable_patterns`, also part of every export's graph checks).
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ExportError
from .graph_checks import fusable_patterns, pattern_problems

if TYPE_CHECKING:
    import onnx

    from ..config import PSViTConfig

# Op types ONNX Runtime's optimizer creates, and what each one replaces.
FUSED_OPS: dict[str, str] = {
    "BiasGelu": "bias Add + GELU",
    "FastGelu": "bias Add + tanh GELU",
    "QuickGelu": "x·sigmoid(αx)",
    "Gelu": "GELU from Div/Erf/Add/Mul/Mul",
    "FusedMatMul": "MatMul + Transpose and/or scale",
    "Gemm": "MatMul + bias Add (2-D)",
    "FusedGemm": "Gemm + activation",
    "FusedConv": "Conv + activation",
    "SkipLayerNormalization": "residual Add + LayerNorm",
    "LayerNormalization": "LayerNorm from primitives",
    "Attention": "attention with the QKV projection",
    "MultiHeadAttention": "attention",
    "BiasSoftmax": "Add + Softmax",
    "QLinearMatMul": "Q/DQ + MatMul (int8 in and out)",
    "MatMulIntegerToFloat": "DQ + MatMul (int8 GEMM, float out)",
    "QGemm": "Q/DQ + Gemm (int8)",
    "QLinearConv": "Q/DQ + Conv (int8)",
    "QAttention": "Q/DQ + attention (int8)",
}
GELU_OPS = ("BiasGelu", "FastGelu", "Gelu", "QuickGelu")


@dataclass
class FusionReport:
    """One artifact on one backend: op types before and after its optimizer, the fusions, time per op type."""

    artifact: str
    backend: str
    providers: list[str]
    exported_ops: dict[str, int]
    optimized_ops: dict[str, int]
    fused: dict[str, int]  # fused op type -> nodes the optimizer created
    removed: dict[str, int]  # op type -> nodes the optimizer removed (folded into fused ones)
    gelu_bias_folded: int = 0  # GELUs whose bias the optimizer folded: BiasGelu, or Gelu after a Gemm
    time_by_op: dict[str, dict[str, float]] | None = None  # op type -> ms_per_run, calls_per_run, share
    batch: int | None = None
    runs: int = 0
    patterns: dict[str, int] = field(default_factory=dict)  # fusable patterns in the file (graph_checks)
    expected: dict[str, int] = field(default_factory=dict)  # what a PSViT graph should show (fusion_problems)
    problems: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def gelu_fused(self) -> int:
        """GELU nodes after optimization (fused op or the standard ``Gelu``); ``Erf`` counts as unfused."""
        return sum(self.optimized_ops.get(op, 0) for op in GELU_OPS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"gelu_fused": self.gelu_fused,
                               "fused_description": {op: FUSED_OPS[op] for op in self.fused}}


def gelu_bias_folded(optimized: "onnx.ModelProto") -> int:
    """GELUs of an optimized graph that add no separate bias pass: ``BiasGelu`` (dynamic batch), or a GELU
    reading a ``Gemm`` with a bias, possibly through the Reshape ORT puts around it (static shapes)."""
    producer = {o: n for n in optimized.graph.node for o in n.output}
    folded = 0
    for n in optimized.graph.node:
        if n.op_type == "BiasGelu" or (n.op_type == "FastGelu" and len(n.input) > 1):
            folded += 1
        elif n.op_type in GELU_OPS:
            p = producer.get(n.input[0])
            while p is not None and p.op_type == "Reshape":
                p = producer.get(p.input[0])
            folded += p is not None and p.op_type in ("Gemm", "FusedGemm") and len(p.input) > 2
    return folded


def op_counts(model: "onnx.ModelProto") -> dict[str, int]:
    """Node count per op type, most frequent first."""
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def onnxruntime_fusions(
    path: str | os.PathLike,
    *,
    providers: list[str] | None = None,
    threads: int | None = None,
    batch: int = 1,
    runs: int = 10,
    keep_optimized: str | os.PathLike | None = None,
) -> FusionReport:
    """Load ``path`` in ONNX Runtime (through :func:`psvit.runtime.load`), compare its optimized graph with
    the file and, when ``runs`` > 0, profile ``runs`` calls at ``batch`` for the time per op type (the first
    call is left out as warm-up when there are several).

    Args:
        providers: ONNX Runtime execution providers or aliases (default CPU).
        keep_optimized: also write the optimized graph there (it is specific to this machine's CPU).
    """
    import onnx

    from ..runtime import load
    from .onnx_io import load_onnx_graph

    if batch < 1 or runs < 0:
        raise ExportError(f"--batch must be at least 1 and --runs at least 0, got {batch} and {runs}")
    path = Path(path)
    exported = load_onnx_graph(path, "pass an .onnx file written by `psvit-export onnx`")
    with tempfile.TemporaryDirectory(prefix="psvit-fusions.") as tmp:
        optimized_path = Path(keep_optimized) if keep_optimized is not None else Path(tmp) / "optimized.onnx"
        rt = load(path, backend="onnxruntime", providers=list(providers or ["cpu"]), threads=threads,
                  profiling=runs > 0, optimized_model_path=optimized_path)
        with rt:
            run_batch = rt.backend.limits.static or batch  # a fixed-batch graph runs its own batch
            if runs > 0:
                x = np.random.default_rng(0).standard_normal((run_batch, *rt.input_shape), dtype=np.float32)
                for _ in range(runs):
                    rt.infer(x)
            profile = rt.layer_profile() if runs > 0 else None
            used = list(getattr(rt.backend, "providers", []))
        optimized = onnx.load(str(optimized_path), load_external_data=False)
    before, after = op_counts(exported), op_counts(optimized)
    fused = {op: after[op] - before.get(op, 0) for op in after if op in FUSED_OPS and after[op] > before.get(op, 0)}
    removed = {op: n - after.get(op, 0) for op, n in before.items() if after.get(op, 0) < n}
    report = FusionReport(
        artifact=str(path), backend="onnxruntime", providers=used, exported_ops=before, optimized_ops=after,
        fused=fused, removed=removed, gelu_bias_folded=gelu_bias_folded(optimized), time_by_op=profile,
        batch=run_batch if runs else None, runs=runs,
    )
    patterns = fusable_patterns(exported)
    report.patterns = patterns.to_dict()
    config = _psvit_config(exported)
    if config is not None:
        report.problems = pattern_problems(patterns, config.depth)
        if computes_in_fp16(exported) and report.providers[:1] == ["CPUExecutionProvider"]:
            report.note = ("FP16 graph on ONNX Runtime's CPU provider, which has no FP16 GELU/Softmax kernels and "
                           "decomposes them: only the graph's patterns are checked (they fuse on GPU providers)")
        else:
            report.expected = expected_fusions(config)
            report.problems += fusion_problems(report)
    return report


def computes_in_fp16(model: "onnx.ModelProto") -> bool:
    """Whether ``model`` has FP16 weights or casts to FP16 (an FP16 graph, or INT8 with an FP16 rest)."""
    import onnx

    f16 = onnx.TensorProto.FLOAT16
    return any(i.data_type == f16 for i in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == f16 for a in n.attribute) for n in model.graph.node)


def _psvit_config(model: "onnx.ModelProto") -> "PSViTConfig | None":
    from ..config import PSViTConfig
    from .metadata import read_metadata

    meta = read_metadata(model)
    cfg = meta.get("psvit.config")
    return PSViTConfig.from_dict(cfg) if isinstance(cfg, dict) else None


def expected_fusions(config: "PSViTConfig") -> dict[str, int]:
    """What ONNX Runtime's CPU optimizer must produce from a PSViT graph of ``config`` (FP32, or INT8 with an
    FP32 rest): one fused GELU per MLP with ``fc1``'s bias folded in (``BiasGelu``; with a fixed batch ORT
    folds every bias into a ``Gemm`` instead), no ``Erf`` left, and every distinct Q·Kᵀ product a
    ``FusedMatMul``. Distinct: ORT's common-subexpression elimination merges a ``qk``-mode sharer's
    recomputed ``softmax(Q·Kᵀ)`` with its owner's, so on ORT both modes run one product per map."""
    return {"gelu_fused": config.depth, "gelu_bias_folded": config.depth, "Erf": 0,
            "qk_fused_matmul": config.num_attention_maps}


def fusion_problems(report: FusionReport) -> list[str]:
    """Differences between ``report`` and its ``expected`` fusions, in words (empty: every fusion fired)."""
    exp, ops = report.expected, report.optimized_ops
    problems = []
    if not exp:
        return problems
    if report.gelu_fused != exp["gelu_fused"] or ops.get("Erf", 0) != exp["Erf"]:
        problems.append(f"GELU fused in {report.gelu_fused} of {exp['gelu_fused']} MLPs ({ops.get('Erf', 0)} Erf "
                        f"left): the exported GELU is not the pattern ONNX Runtime fuses")
    if report.gelu_bias_folded != exp["gelu_bias_folded"]:
        problems.append(f"fc1's bias folded into {report.gelu_bias_folded} of {exp['gelu_bias_folded']} GELUs "
                        f"(BiasGelu, or Gemm before the GELU): the bias Add does not feed the GELU directly")
    if ops.get("FusedMatMul", 0) < exp["qk_fused_matmul"]:
        problems.append(f"{ops.get('FusedMatMul', 0)} FusedMatMul for {exp['qk_fused_matmul']} Q·Kᵀ products: the "
                        f"softmax scale or the transpose of K is not folded into the product")
    return problems
