"""Graph clean-up after tracing: constant folding, the default rewrite rules, lifting constants to
initializers and de-duplicating them by content.

This is onnxscript's default optimizer minus common-subexpression elimination: in ``qk`` mode a sharing
block recomputes ``softmax(Q Kᵀ)`` from the same Q and K as its predecessor, and CSE would merge the two
back into one shared map (silently turning ``qk`` into ``map``). Without CSE the ``map`` graphs come out
node-for-node the same, so nothing else is lost.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx_ir as ir


def optimize_graph(model: "ir.Model", iterations: int = 2) -> None:
    """Optimize ``model`` in place (see the module docstring for what runs and what does not)."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    import onnxscript.optimizer
    import onnxscript.rewriter

    common.InlinePass()(model)
    for _ in range(iterations):
        onnxscript.optimizer.fold_constants_ir(model, onnx_shape_inference=True)
        onnxscript.rewriter.rewrite(model)  # default rules; also removes unused nodes
    ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(size_limit=1 << 62),  # by content, any size (default: <= 1024)
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)
