"""Structural checks of an exported PSViT graph: the promises the toolchain makes about its ONNX.

- ``onnx.checker`` full check;
- no run-time shape arithmetic (Shape, ConstantOfShape, Range, Size, NonZero, Expand, ...);
- after shape inference with data propagation every dimension is concrete except the batch;
- one Softmax per distinct attention map in ``map`` stages (plus one per sharing block in ``qk`` stages),
  and each shared map feeds the A·V MatMul of every block that shares it;
- no duplicated initializers (by content hash) and exactly the weight MatMul/Gemm nodes the model's forward
  runs (:meth:`PSViT.weight_gemms`: one per Linear layer, three for the Q, K and V rows of an attention's
  ``qkv``; ``qk`` mode reuses Q and K instead of projecting them again);
- the patterns backends fuse (:func:`fusable_patterns`): one GELU per MLP, as the ``Gelu`` op or the erf
  form ONNX Runtime's GeluFusion matches, read directly from ``fc1``'s bias Add (ORT: ``BiasGelu``), and
  every Q·Kᵀ product scaled by a constant right at the product (ORT: ``FusedMatMul``; TensorRT's attention
  fusion wants the scale on Q or on the product). Whether ORT really fuses them is
  :mod:`.fusions`' job.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GraphCheckError

if TYPE_CHECKING:
    import onnx

    from ..config import PSViTConfig

# Ops that compute shapes at run time (or whose output shape depends on values).
SHAPE_OPS = frozenset({
    "Shape", "Size", "ConstantOfShape", "Range", "NonZero", "Expand", "Tile", "Compress", "Unique",
    "TopK", "Loop", "If", "Scan",
})
WEIGHT_OPS = ("MatMul", "Gemm")


@dataclass
class FusablePatterns:
    """GELU and attention patterns in the form backends fuse (see the module docstring)."""

    gelu: int  # Gelu ops + erf GELUs in ORT's GeluFusion form
    unfusable_erf: int  # Erf nodes outside that form
    bias_gelu: int  # GELUs whose input is Add(x, 1-D constant bias)
    softmax: int
    qk_scaled: int  # Softmax inputs that are MatMul(Q·s, Kᵀ), MatMul(Q, Kᵀ·s) or MatMul(Q, Kᵀ)·s

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class GraphReport:
    """What the checks found; ``problems`` is empty for a graph that keeps every promise."""

    nodes: int
    op_counts: dict[str, int]
    shape_ops: dict[str, int]
    symbolic_dims: list[str]  # "tensor: shape" for every tensor with a non-batch symbolic/unknown dim
    softmax: int
    expected_softmax: int
    softmax_consumers: list[int]  # MatMul consumers per Softmax, graph order
    expected_softmax_consumers: list[int]
    duplicated_initializers: list[list[str]]
    weight_matmuls: int
    expected_weight_matmuls: int | None
    patterns: dict[str, int] = field(default_factory=dict)  # FusablePatterns
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ok": self.ok}


def load_structure(model: "onnx.ModelProto | str | os.PathLike") -> "onnx.ModelProto":
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(str(model))


def infer_shapes(model: "onnx.ModelProto | str | os.PathLike") -> "onnx.ModelProto":
    """Strict shape and type inference with data propagation (a path works for external-data models)."""
    import tempfile

    import onnx
    from onnx import shape_inference

    if isinstance(model, onnx.ModelProto):
        return shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "inferred.onnx"
        shape_inference.infer_shapes_path(str(model), str(out), check_type=True, strict_mode=True,
                                          data_prop=True)
        return onnx.load(str(out), load_external_data=False)


def _dims(value_info: "onnx.ValueInfoProto") -> list[int | str | None]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return [None]
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def non_static_tensors(inferred: "onnx.ModelProto", batch_symbol: str | None) -> list[str]:
    """Tensors with a dimension that is neither concrete nor the batch symbol (at most one batch dim)."""
    bad = []
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        if not vi.type.HasField("tensor_type"):
            continue
        dims = _dims(vi)
        symbolic = [d for d in dims if not isinstance(d, int)]
        if symbolic and (batch_symbol is None or symbolic != [batch_symbol]):
            bad.append(f"{vi.name}: {dims}")
    return bad


def shape_op_counts(model: "onnx.ModelProto") -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node if n.op_type in SHAPE_OPS))


def duplicated_initializers(model: "onnx.ModelProto") -> list[list[str]]:
    """Groups of initializers with identical dtype, shape and content (external data is read)."""
    from onnx import numpy_helper

    groups: dict[str, list[str]] = {}
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        key = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode() + arr.tobytes()).hexdigest()
        groups.setdefault(key, []).append(init.name)
    return [names for names in groups.values() if len(names) > 1]


def _readers(model: "onnx.ModelProto") -> dict[str, list["onnx.NodeProto"]]:
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    return readers


def softmax_consumers(model: "onnx.ModelProto") -> list[int]:
    """For each Softmax (graph order), how many MatMul nodes read its output (directly or via Casts)."""
    readers = _readers(model)

    def matmuls(name: str) -> int:
        total = 0
        for n in readers.get(name, []):
            if n.op_type == "MatMul":
                total += 1
            elif n.op_type == "Cast":
                total += matmuls(n.output[0])
        return total

    return [matmuls(n.output[0]) for n in model.graph.node if n.op_type == "Softmax"]


def expected_attention(config: "PSViTConfig", modes: tuple[str, ...]) -> tuple[int, list[int]]:
    """Expected Softmax count and, per Softmax in block order, the number of A·V MatMuls it feeds."""
    owner = config.map_owner
    per_softmax: list[int] = []
    for b in range(config.depth):
        mode = modes[config.stage_of_block(b)]
        if owner[b] == b:
            sharers = sum(1 for o in range(config.depth) if o != b and owner[o] == b)
            per_softmax.append(1 + (sharers if mode == "map" else 0))
        elif mode == "qk":
            per_softmax.append(1)
    return len(per_softmax), per_softmax


def _constants(model: "onnx.ModelProto") -> dict[str, Any]:
    """Initializers and Constant outputs by name (tensor protos)."""
    found: dict[str, Any] = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            found.update({n.output[0]: a.t for a in n.attribute if a.name == "value"})
    return found


def fusable_patterns(model: "onnx.ModelProto") -> FusablePatterns:
    """Count the GELU and scaled Q·Kᵀ patterns of ``model`` that ONNX Runtime and TensorRT fuse."""
    import math

    from onnx import numpy_helper

    consts = _constants(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    readers = _readers(model)

    def scalar(name: str) -> float | None:
        t = consts.get(name)
        if t is None:
            return None
        arr = numpy_helper.to_array(t)
        return float(arr.reshape(())) if arr.size == 1 else None

    def made_by(name: str, op: str) -> Any:
        n = producer.get(name)
        return n if n is not None and n.op_type == op else None

    def other(node: Any, name: str) -> str:
        return node.input[1] if node.input[0] == name else node.input[0]

    def erf_gelu_input(erf: Any) -> str | None:
        """x of ``(x * 0.5) * (1 + erf(x / √2))`` around ``erf``, or None when it has another form."""
        div = made_by(erf.input[0], "Div")
        adds = [a for a in readers.get(erf.output[0], []) if a.op_type == "Add"]
        root2 = scalar(div.input[1]) if div is not None else None
        if root2 is None or len(adds) != 1:
            return None
        x, add = div.input[0], adds[0]
        muls = [m for m in readers.get(add.output[0], []) if m.op_type == "Mul"]
        if abs(root2 - math.sqrt(2)) > 1e-6 or scalar(other(add, erf.output[0])) != 1.0 or len(muls) != 1:
            return None
        half = made_by(other(muls[0], add.output[0]), "Mul")
        if half is None or x not in half.input or scalar(other(half, x)) != 0.5:
            return None
        return x

    gelu_inputs = [n.input[0] for n in model.graph.node if n.op_type == "Gelu"]
    erf_nodes = [n for n in model.graph.node if n.op_type == "Erf"]
    erf_inputs = [x for x in map(erf_gelu_input, erf_nodes) if x is not None]

    def biased(x: str) -> bool:
        add = made_by(x, "Add")
        if add is None:
            return False
        dims = [list(consts[i].dims) for i in add.input if i in consts]
        return len(dims) == 1 and len(dims[0]) == 1

    def scaled(node: Any) -> bool:
        return node is not None and node.op_type in ("Mul", "Div") and any(scalar(i) is not None for i in node.input)

    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    qk_scaled = 0
    for sm in softmax:
        p = producer.get(sm.input[0])
        if scaled(p):  # MatMul(Q, Kᵀ) * s
            p = next((producer.get(i) for i in p.input if scalar(i) is None), None)
            qk_scaled += p is not None and p.op_type == "MatMul"
        elif p is not None and p.op_type == "MatMul":
            qk_scaled += any(scaled(producer.get(i)) for i in p.input)
    inputs = gelu_inputs + erf_inputs
    return FusablePatterns(gelu=len(inputs), unfusable_erf=len(erf_nodes) - len(erf_inputs),
                           bias_gelu=sum(map(biased, inputs)), softmax=len(softmax), qk_scaled=qk_scaled)


def pattern_problems(patterns: FusablePatterns, mlps: int) -> list[str]:
    """What keeps a backend from fusing the GELUs and attention products of a graph with ``mlps`` MLPs."""
    problems = []
    if patterns.gelu != mlps or patterns.unfusable_erf:
        problems.append(f"{patterns.gelu} GELU(s) in a fusable form for {mlps} MLPs ({patterns.unfusable_erf} Erf in "
                        f"another form)")
    if patterns.bias_gelu != patterns.gelu:
        problems.append(f"{patterns.gelu - patterns.bias_gelu} GELU(s) not read directly from their bias Add")
    if patterns.qk_scaled != patterns.softmax:
        problems.append(f"{patterns.softmax - patterns.qk_scaled} of {patterns.softmax} attention products are "
                        f"not scaled by a constant at Q·Kᵀ")
    return problems


def weight_matmul_count(model: "onnx.ModelProto") -> int:
    """MatMul/Gemm nodes that multiply by an initializer (in a clean export, ``PSViT.weight_gemms()``)."""
    weights = {i.name for i in model.graph.initializer}
    # FP16 graphs may cast a weight before a node kept in FP32: a Cast of a weight is a weight too.
    weights |= {n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] in weights}
    return sum(1 for n in model.graph.node if n.op_type in WEIGHT_OPS and any(i in weights for i in n.input))


def check_graph(
    model: "onnx.ModelProto | str | os.PathLike",
    *,
    config: "PSViTConfig",
    modes: tuple[str, ...],
    batch: int | None,
    batch_symbol: str = "batch",
    weight_gemms: int | None = None,
    raise_on_problem: bool = True,
) -> GraphReport:
    """Run every structural check; raise :class:`GraphCheckError` listing all problems (or just report).

    Args:
        model: the model or its path (use the path for models with external data).
        modes: shared-attention mode per stage, as exported.
        batch: the fixed batch, or None when the batch is the symbolic ``batch_symbol``.
        weight_gemms: the weight products of the PyTorch model's forward (``PSViT.weight_gemms()``);
            checked against the weight MatMul/Gemm nodes.
    """
    import onnx

    path_or_model = model
    model = load_structure(model)
    problems: list[str] = []
    try:
        if isinstance(path_or_model, onnx.ModelProto):
            onnx.checker.check_model(model, full_check=True)
        else:
            onnx.checker.check_model(str(path_or_model), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        problems.append(f"onnx.checker failed: {str(exc).splitlines()[0]}")
    try:
        inferred = infer_shapes(path_or_model)
        symbolic = non_static_tensors(inferred, None if batch is not None else batch_symbol)
    except onnx.shape_inference.InferenceError as exc:
        problems.append(f"shape inference failed: {str(exc).splitlines()[0]}")
        symbolic = []
    ops = dict(Counter(n.op_type for n in model.graph.node))
    shape_ops = shape_op_counts(model)
    n_softmax, expected_consumers = expected_attention(config, modes)
    consumers = softmax_consumers(model)
    dups = duplicated_initializers(model)
    weights = weight_matmul_count(model)
    patterns = fusable_patterns(model)

    if shape_ops:
        problems.append(f"run-time shape computation ops in the graph: {shape_ops}")
    if symbolic:
        what = "the batch" if batch is None else "nothing (fixed batch)"
        problems.append(
            f"{len(symbolic)} tensor(s) have symbolic dims other than {what}, e.g. {symbolic[:3]}"
        )
    if len(consumers) != n_softmax:
        problems.append(f"{len(consumers)} Softmax nodes, expected {n_softmax} (one per computed attention map)")
    elif sorted(consumers) != sorted(expected_consumers):
        problems.append(
            f"Softmax outputs feed {consumers} MatMuls, expected {expected_consumers}: a shared map must feed "
            f"the A·V product of every block that shares it"
        )
    if dups:
        problems.append(f"{len(dups)} group(s) of duplicated initializers, e.g. {dups[0]}")
    if weight_gemms is not None and weights != weight_gemms:
        problems.append(f"{weights} weight MatMul/Gemm nodes for the model's {weight_gemms} weight products "
                        f"(duplicated projections?)")
    problems += pattern_problems(patterns, config.depth)
    report = GraphReport(
        nodes=len(model.graph.node), op_counts=ops, shape_ops=shape_ops, symbolic_dims=symbolic,
        softmax=len(consumers), expected_softmax=n_softmax, softmax_consumers=consumers,
        expected_softmax_consumers=expected_consumers, duplicated_initializers=dups,
        weight_matmuls=weights, expected_weight_matmuls=weight_gemms, patterns=patterns.to_dict(),
        problems=problems,
    )
    if problems and raise_on_problem:
        raise GraphCheckError("the exported graph fails its checks:\n  " + "\n  ".join(problems))
    return report
