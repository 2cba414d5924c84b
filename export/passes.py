"""Graph clean-up after tracing: constant folding, the default rewrite rules, lifting constants to
initializers and de-duplicating them by content; then the GELU form backends fuse.

This is onnxscript's default optimizer, with views of weights (slices, transposes) folded whatever their
size, minus common-subexpression elimination: in ``qk`` mode a sharing
block recomputes ``softmax(Q Kᵀ)`` from the same Q and K as its predecessor, and CSE would merge the two
back into one shared map (silently turning ``qk`` into ``map``). Without CSE the ``map`` graphs come out
node-for-node the same, so nothing else is lost.

GELU: from opset 20 the exporter emits the ``Gelu`` op, which ONNX Runtime fuses with the bias Add before
it (``BiasGelu``) and TensorRT imports as one activation. Below opset 20 it emits
``x * (0.5 * (1 + erf(x / √2)))``, which ONNX Runtime's GeluFusion does not match (it wants
``(x * 0.5) * (1 + erf(x / √2))``, the order of the BERT exports it was written for): that one
re-association is applied here, so every opset's GELU is fused.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx_ir as ir

GELU_OP_OPSET = 20  # the first opset with the Gelu op


def optimize_graph(model: "ir.Model", iterations: int = 2) -> None:
    """Optimize ``model`` in place (see the module docstring for what runs and what does not)."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    import onnxscript.optimizer
    import onnxscript.rewriter

    common.InlinePass()(model)
    for _ in range(iterations):
        # Every constant in a PSViT graph is a weight or derived from one: a folded weight view is stored
        # whatever its size (the default keeps results over 262,144 elements unfolded: a 576x576 Q slice).
        onnxscript.optimizer.fold_constants_ir(model, onnx_shape_inference=True, should_fold=_fold_weight_views,
                                               output_size_limit=1 << 62)
        onnxscript.rewriter.rewrite(model)  # default rules; also removes unused nodes
    if model.opset_imports.get("", GELU_OP_OPSET) < GELU_OP_OPSET:
        onnxscript.rewriter.rewrite(model, pattern_rewrite_rules=_fusable_erf_gelu_rules())
    ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(size_limit=1 << 62),  # by content, any size (default: <= 1024)
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


# Ops that only select or reorder the elements of a weight: folded whatever the weight's size (onnxscript folds
# large inputs of Transpose only, and only when the weight has no other reader; the exportable attention slices
# Q, K and V out of one ``qkv`` weight that three Slices read).
_WEIGHT_VIEW_OPS = frozenset({"Slice", "Split", "Transpose", "Squeeze", "Unsqueeze", "Reshape"})


def _fold_weight_views(node: "ir.Node") -> bool | None:
    """``should_fold`` of onnxscript's constant folding: True for a view op of constants (all of its inputs
    are constant when it is asked), None (the default rules) for everything else."""
    return True if node.domain == "" and node.op_type in _WEIGHT_VIEW_OPS else None


def _scalar(value: "ir.Value") -> float | None:
    import onnx_ir as ir

    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None or tensor.size != 1:
        return None
    return float(tensor.numpy().reshape(()))


def _fusable_erf_gelu_rules() -> Any:
    """``x * (0.5 * (1 + erf(x / √2)))`` -> ``(x * 0.5) * (1 + erf(x / √2))`` (any operand order)."""
    from onnxscript.rewriter import pattern

    def exported(op: Any, x: Any, half: Any, one: Any, root2: Any) -> Any:
        return op.Mul(x, op.Mul(half, op.Add(op.Erf(op.Div(x, root2)), one)))

    def fusable(op: Any, x: Any, half: Any, one: Any, root2: Any) -> Any:
        return op.Mul(op.Mul(x, half), op.Add(op.Erf(op.Div(x, root2)), one))

    def is_gelu(context: Any, x: Any, half: Any, one: Any, root2: Any, **_: Any) -> bool:
        r2 = _scalar(root2)
        return _scalar(half) == 0.5 and _scalar(one) == 1.0 and r2 is not None and abs(r2 - math.sqrt(2)) < 1e-6

    return pattern.RewriteRuleSet([pattern.RewriteRule(exported, fusable, is_gelu, name="FusableErfGelu")],
                                  commute=True)
