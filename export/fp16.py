"""FP32 -> FP16-typed ONNX, the form a strongly-typed TensorRT build (10.x flag, 11.x always) runs in FP16.

What stays FP32:
- LayerNormalization (``keep_fp32_ops``): its mean/variance lose accuracy in FP16 (TensorRT #2781, #4493);
- every node whose values on the sample inputs (or whose initializers) exceed ``FP16_MAX / headroom``;
- ``Cast(to=float)`` nodes and the run-time shape arithmetic computed from them (``Cast(int -> float)``,
  then Sqrt/Div with constants...): onnxconverter-common retypes a Cast's output to float16 without
  changing its ``to`` attribute, and leaves float Constants feeding it as they are — the "Cast typed
  float16 where float was expected" load failure seen with timm's DeiT export. PSViT's graphs have no
  such nodes; foreign graphs do.
Graph inputs/outputs stay FP32 unless ``keep_io_types=False``.

Clean-up after the converter: a ``Cast(fp16) -> Cast(fp32)`` pair it puts between two FP32 nodes is
bypassed (the detour through fp16 would overflow the very values kept FP32), and ``Cast(fp16 weight ->
float)`` is replaced by the original FP32 weight. The result is re-typed from scratch (stale
``value_info`` dropped, strict type inference) so any inconsistency is an error here, not in a runtime.
"""
from __future__ import annotations

import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import require
from .errors import ExportError
from .onnx_io import name_nodes

if TYPE_CHECKING:
    import onnx

FP16_MAX = 65504.0
DEFAULT_HEADROOM = 8.0  # block nodes whose sample values exceed FP16_MAX / 8 (3 bits of headroom)
KEEP_FP32_OPS = ("LayerNormalization",)
CONVERTERS = ("onnxconverter-common", "modelopt")
_FLOAT = 1  # onnx.TensorProto.FLOAT
_FLOAT16 = 10


@dataclass
class Fp16Report:
    """What the conversion kept in FP32, and why."""

    converter: str
    keep_io_types: bool
    kept_fp32_ops: list[str]
    overflow_threshold: float
    overflow_nodes: dict[str, float] = field(default_factory=dict)  # node -> max |value| seen
    shape_arithmetic_nodes: list[str] = field(default_factory=list)
    samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _elem_types(model: "onnx.ModelProto") -> dict[str, int]:
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def shape_arithmetic_nodes(model: "onnx.ModelProto", types: dict[str, int] | None = None) -> list[str]:
    """Nodes computing float values from shapes/constants only: ``Cast(int -> float)`` and its consumers
    whose other inputs are constants or also shape-derived (graph order). ``types``: :func:`_elem_types`
    of ``model``, if already computed."""
    types = _elem_types(model) if types is None else types
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    derived: set[str] = set()
    found: list[str] = []
    for n in model.graph.node:
        if n.op_type == "Cast":
            seed = types.get(n.input[0]) not in (_FLOAT, _FLOAT16) and types.get(n.output[0]) == _FLOAT
            seed = seed or n.input[0] in derived
        else:
            live = [i for i in n.input if i and i not in constants]
            seed = bool(live) and any(i in derived for i in live) and all(
                i in derived or types.get(i) != _FLOAT for i in live
            )
        if seed:
            found.append(n.name)
            derived.update(n.output)
    return found


def activation_ranges(
    model: "onnx.ModelProto", inputs: np.ndarray, types: dict[str, int] | None = None
) -> dict[str, float]:
    """Max |value| of every float tensor (intermediates included) over ``inputs``, run on ORT CPU.

    ``inputs`` feeds the model's single input, one sample at a time (every intermediate is held in memory);
    a graph with a fixed batch N gets each sample repeated N times. ``types``: as for
    :func:`shape_arithmetic_nodes`.
    """
    import onnx

    from ..runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    types = _elem_types(model) if types is None else types
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for n in probe.graph.node:
        for o in n.output:
            if o and o not in existing and types.get(o) == _FLOAT:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(o, _FLOAT, None))
                existing.add(o)
    backend = OnnxRuntimeBackend(probe.SerializeToString(), name="the FP32 graph (value ranges)", image_input=False)
    fixed = backend.limits.static
    ranges: dict[str, float] = {}
    for i in range(len(inputs)):
        sample = inputs[i:i + 1] if fixed is None else np.repeat(inputs[i:i + 1], fixed, axis=0)
        outs = backend.run(sample.astype(np.float32))
        for name, value in (outs.items() if isinstance(outs, dict) else [(backend.output_names[0], outs)]):
            value = np.abs(np.nan_to_num(np.asarray(value, np.float32), nan=0.0, posinf=np.inf, neginf=np.inf))
            ranges[name] = max(ranges.get(name, 0.0), float(value.max()) if value.size else 0.0)
    return ranges


def overflow_nodes(
    model: "onnx.ModelProto", inputs: np.ndarray, threshold: float, types: dict[str, int] | None = None
) -> dict[str, float]:
    """Nodes reading or producing (on ``inputs``) a value, or reading an initializer, beyond ``threshold``."""
    from onnx import numpy_helper

    ranges = activation_ranges(model, inputs, types)
    init_max = {
        i.name: float(np.abs(numpy_helper.to_array(i)).max(initial=0.0))
        for i in model.graph.initializer if i.data_type == _FLOAT
    }
    found: dict[str, float] = {}
    input_ranges = {**ranges, model.graph.input[0].name: float(np.abs(inputs).max(initial=0.0))}
    for n in model.graph.node:
        # inputs count too: a node reading a huge FP32 value would get it through a Cast to fp16 (inf)
        values = [ranges.get(o, 0.0) for o in n.output]
        values += [max(input_ranges.get(i, 0.0), init_max.get(i, 0.0)) for i in n.input]
        peak = max(values, default=0.0)
        if peak > threshold:
            found[n.name] = peak
    return found


def _symbolic_shapes(model: "onnx.ModelProto") -> dict[str, "onnx.TensorShapeProto"]:
    """Shapes the exporter recorded (``batch`` where ONNX inference alone cannot tell, e.g. after a
    ``Reshape(-1, ...)``), by tensor name."""
    g = model.graph
    return {
        v.name: v.type.tensor_type.shape
        for v in [*g.input, *g.value_info, *g.output] if v.type.tensor_type.HasField("shape")
    }


def _retype(model: "onnx.ModelProto", shapes: dict[str, "onnx.TensorShapeProto"]) -> "onnx.ModelProto":
    """Infer every intermediate type again from scratch, strictly (the converter's ``value_info`` can be
    stale), and carry over the exporter's symbolic shapes of tensors that kept their name."""
    from onnx import shape_inference

    def infer(m: "onnx.ModelProto") -> "onnx.ModelProto":
        try:
            return shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
        except shape_inference.InferenceError as exc:
            raise ExportError(
                f"the FP16 graph is inconsistently typed after conversion: {str(exc).splitlines()[0]}. Keep "
                f"the offending node in FP32 or report the graph."
            ) from exc

    del model.graph.value_info[:]
    typed = infer(model)  # types right; symbolic dims may be unknown
    for vi in typed.graph.value_info:
        known = shapes.get(vi.name)
        if known is not None and len(known.dim) == len(vi.type.tensor_type.shape.dim):
            vi.type.tensor_type.shape.CopyFrom(known)
            model.graph.value_info.append(vi)
    return infer(model)  # propagates the carried shapes to the new Cast outputs


def _convert_onnxconverter(
    model: "onnx.ModelProto", keep_io_types: bool, ops: list[str], nodes: list[str]
) -> "onnx.ModelProto":
    float16 = require("onnxconverter_common.float16", "onnxconverter-common", "FP16 conversion")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight clipped to the fp16 range
        return float16.convert_float_to_float16(
            model, keep_io_types=keep_io_types, max_finite_val=FP16_MAX,
            op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + ops, node_block_list=nodes,
        )


def _convert_modelopt(
    model: "onnx.ModelProto", keep_io_types: bool, ops: list[str], nodes: list[str],
    inputs: np.ndarray, threshold: float,
) -> "onnx.ModelProto":
    import onnx

    autocast = require("modelopt.onnx.autocast", "'nvidia-modelopt[onnx]'", "FP16 conversion with AutoCast")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fp32.onnx"
        onnx.save(model, str(path))
        return autocast.convert_to_mixed_precision(
            onnx_path=str(path), low_precision_type="fp16", keep_io_types=keep_io_types,
            op_types_to_exclude=ops, nodes_to_exclude=[f"^{re.escape(n)}$" for n in nodes],
            calibration_data={model.graph.input[0].name: inputs}, data_max=threshold,
            init_max=FP16_MAX, providers=["cpu"],
        )


def float_casts(model: "onnx.ModelProto") -> list[str]:
    """``Cast(to=float)`` nodes: the converter would retype their output to float16 without changing
    ``to``, so they are kept as they are (a Cast to float16 follows them where needed)."""
    return [
        n.name for n in model.graph.node
        if n.op_type == "Cast" and any(a.name == "to" and a.i == _FLOAT for a in n.attribute)
    ]


def remove_cast_round_trips(model: "onnx.ModelProto") -> int:
    """Bypass ``Cast(to=float)(Cast(to=float16)(x))`` for a float32 ``x``: the converter puts such a pair
    between two nodes it keeps in FP32, and the detour through fp16 overflows (inf) or rounds the very
    values those nodes were kept FP32 for. Returns how many pairs were bypassed."""
    types = _elem_types(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}

    def cast_to(node: "onnx.NodeProto") -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    rename: dict[str, str] = {}
    dead: list["onnx.NodeProto"] = []
    bypassed = 0
    for c2 in model.graph.node:
        c1 = producer.get(c2.input[0]) if cast_to(c2) == _FLOAT else None
        if c1 is None or cast_to(c1) != _FLOAT16 or types.get(c1.input[0]) != _FLOAT:
            continue
        bypassed += 1
        if c2.output[0] in outputs:
            c2.input[0] = c1.input[0]  # keep the output's name: a float -> float Cast, a no-op
        else:
            rename[c2.output[0]] = c1.input[0]
            dead.append(c2)
    _remove_and_rewire(model, dead, rename)
    used = {i for n in model.graph.node for i in n.input} | outputs
    for n in [n for n in model.graph.node if n.op_type == "Cast" and n.output[0] not in used]:
        model.graph.node.remove(n)  # the fp16 Casts nobody reads any more
    return bypassed


def _remove_and_rewire(model: "onnx.ModelProto", dead: list[Any], rename: dict[str, str]) -> None:
    """Remove the ``dead`` nodes and point every input named in ``rename`` at its replacement."""
    for n in dead:
        model.graph.node.remove(n)
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]


def fold_weight_casts(model: "onnx.ModelProto", original: "onnx.ModelProto") -> int:
    """Replace ``Cast(fp16 weight -> float)`` (weights of nodes kept in FP32, e.g. LayerNorm scale/bias)
    by the original FP32 weight: exact values, fewer nodes. Returns how many Casts were removed."""
    fp32 = {i.name: i for i in original.graph.initializer if i.data_type == _FLOAT}
    inits = {i.name: i for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    replace: dict[str, str] = {}  # Cast output -> FP32 initializer name
    added: dict[str, str] = {}  # fp16 initializer name -> FP32 initializer name
    dead = []
    for n in model.graph.node:
        src = n.input[0] if n.op_type == "Cast" and n.output[0] not in outputs else None
        if src in inits and inits[src].data_type == _FLOAT16 and src in fp32 and any(
            a.name == "to" and a.i == _FLOAT for a in n.attribute
        ):
            if src not in added:
                name = f"{src}__fp32"
                weight = model.graph.initializer.add()
                weight.CopyFrom(fp32[src])
                weight.name = name
                added[src] = name
            replace[n.output[0]] = added[src]
            dead.append(n)
    _remove_and_rewire(model, dead, replace)
    used = {i for n in model.graph.node for i in n.input}
    unused = [i for i in model.graph.initializer if i.name in added and i.name not in used]
    for i in unused:
        model.graph.initializer.remove(i)
    return len(dead)


def convert_fp16(
    model: "onnx.ModelProto",
    sample_inputs: np.ndarray,
    *,
    keep_io_types: bool = True,
    keep_fp32_ops: tuple[str, ...] = KEEP_FP32_OPS,
    headroom: float = DEFAULT_HEADROOM,
    converter: str = "onnxconverter-common",
) -> tuple["onnx.ModelProto", Fp16Report]:
    """Convert an FP32 model to FP16, keeping the nodes listed in the module docstring in FP32.

    Args:
        sample_inputs: images (N, C, H, W) that show the value ranges (real images are best).
        keep_io_types: keep graph inputs/outputs FP32 (Casts at the boundary).
        headroom: a node stays FP32 when its sample values exceed ``FP16_MAX / headroom``.
        converter: ``onnxconverter-common`` (default, verified here) or ``modelopt`` (ModelOpt AutoCast).
    """
    import onnx

    if converter not in CONVERTERS:
        raise ExportError(f"unknown FP16 converter {converter!r}; use one of {', '.join(CONVERTERS)}")
    if headroom < 1:
        raise ExportError(f"headroom must be at least 1, got {headroom}")
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    name_nodes(model_copy)
    threshold = FP16_MAX / headroom
    types = _elem_types(model_copy)  # one shape inference for both analyses
    shape_nodes = shape_arithmetic_nodes(model_copy, types)
    overflow = overflow_nodes(model_copy, sample_inputs, threshold, types)
    blocked = sorted(set(shape_nodes) | set(overflow) | set(float_casts(model_copy)))
    if converter == "modelopt":
        converted = _convert_modelopt(model_copy, keep_io_types, list(keep_fp32_ops), blocked,
                                      sample_inputs, threshold)
    else:
        converted = _convert_onnxconverter(model_copy, keep_io_types, list(keep_fp32_ops), blocked)
    remove_cast_round_trips(converted)
    fold_weight_casts(converted, model_copy)
    converted = _retype(converted, _symbolic_shapes(model_copy))
    report = Fp16Report(
        converter=converter, keep_io_types=keep_io_types, kept_fp32_ops=list(keep_fp32_ops),
        overflow_threshold=threshold, overflow_nodes=overflow, shape_arithmetic_nodes=shape_nodes,
        samples=len(sample_inputs),
    )
    return converted, report
