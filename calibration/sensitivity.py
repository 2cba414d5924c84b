"""Per-layer sensitivity: quantize one recipe node at a time (ranges from the calibration cache, so no new
calibration pass), run it on ONNX Runtime CPU (through :mod:`psvit.runtime`) and rank nodes by the output error that node alone adds."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cache import read_cache
from .errors import CalibrationError

SUGGEST_FACTOR = 3.0  # suggest excluding nodes whose error is this many times the median node's


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    kind: str
    rel_l2: float  # logits error vs FP32 with only this node quantized
    top1_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SensitivityReport:
    layers: list[LayerSensitivity]  # most sensitive first
    suggested_exclusions: list[str]
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [x.to_dict() for x in self.layers], "suggested_exclusions": self.suggested_exclusions,
                "images": self.images, "suggest_rule": f"error > {SUGGEST_FACTOR:g} x median, top 3 at most"}


def layer_sensitivity(
    fp32_path: str | os.PathLike,
    cache_path: str | os.PathLike,
    images: np.ndarray,
    *,
    quantize_qk: bool = False,
    exclude: tuple[str, ...] = (),
) -> SensitivityReport:
    """Rank the recipe's nodes by the logits error (relative L2 vs FP32) of quantizing each one alone.

    ``cache_path`` is the calibration cache of ``fp32_path`` (written by :func:`quantize_onnx`).
    """
    import onnx

    from ..export.verify import compare_outputs, outputs_of
    from ..provenance import sha256_file
    from ..runtime import load
    from .model import quantization_graph
    from .quantize import ort_quantize
    from .recipe import plan_recipe

    cache = read_cache(cache_path)
    if cache["model_sha256"] != sha256_file(fp32_path):
        raise CalibrationError(f"calibration cache {cache_path} belongs to another model; calibrate first")
    proto = quantization_graph(fp32_path)
    recipe = plan_recipe(proto, quantize_qk=quantize_qk, exclude=exclude)
    with load(fp32_path, name="FP32") as reference:  # (N, classes) once, against every candidate
        ref_name, ref_out = reference.name, outputs_of(reference, images)
    layers: list[LayerSensitivity] = []
    with tempfile.TemporaryDirectory(prefix="psvit-sens.") as tmpdir:
        tmp = Path(tmpdir)
        model_in, ranges = tmp / "named.onnx", tmp / "ranges.json"
        onnx.save(proto, str(model_in))
        ranges.write_text(json.dumps(cache["ranges"]))
        for node in recipe.quantize:
            q_path = tmp / "one.onnx"
            ort_quantize(model_in, q_path, None, [node], cache["method"], ranges)
            with load(q_path, name=node) as candidate:
                cmp = compare_outputs(ref_name, ref_out, candidate.name, outputs_of(candidate, images),
                                      len(images))
            layers.append(LayerSensitivity(node, recipe.kinds[node], cmp.worst_rel_l2, cmp.top1_agreement or 1.0))
    layers.sort(key=lambda x: -x.rel_l2)
    median = float(np.median([x.rel_l2 for x in layers]))
    suggested = [x.node for x in layers[:3] if x.rel_l2 > SUGGEST_FACTOR * median]
    return SensitivityReport(layers, suggested, len(images))


def sensitivity_table(report: SensitivityReport, limit: int = 15) -> Any:
    from rich.table import Table

    table = Table(title=f"per-layer sensitivity ({report.images} images; one node quantized at a time)")
    for col in ("rank", "node", "kind", "logits rel. L2", "top-1 agreement"):
        table.add_column(col, justify="right" if col != "node" else "left")
    for i, x in enumerate(report.layers[:limit], 1):
        mark = " *" if x.node in report.suggested_exclusions else ""
        table.add_row(str(i), x.node + mark, x.kind, f"{x.rel_l2:.5f}", f"{x.top1_agreement:.2%}")
    return table
