"""The accuracy report: FP32 vs INT8 on labelled held-out images — top-1 (top-5 with ≥ 5 classes),
top-1 agreement, logits cosine and relative L2 — as a dict (JSON) and a rich table."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import CalibrationError
from .evaluation import EvalSet

TARGET_DROP_POINTS = 0.5
TARGET_AGREEMENT = 0.99


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-logits, axis=1)[:, :k]  # (N, k)
    return float(np.mean((top == labels[:, None]).any(axis=1)))


def accuracy_report(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, data: EvalSet) -> dict[str, Any]:
    """Run both graphs once on ONNX Runtime CPU (through :mod:`psvit.runtime`) over ``data`` and compare the
    logits (:func:`psvit.export.verify.output_metrics`, the metrics of :func:`psvit.export.compare`)."""
    from ..export.verify import output_metrics, outputs_of
    from ..runtime import load

    with load(fp32_path, name="FP32") as fp32, load(int8_path, name="INT8") as int8:
        name = fp32.output_names[0]
        ref, cand = outputs_of(fp32, data.images)[name], outputs_of(int8, data.images)[int8.output_names[0]]
    if ref.shape[1] != len(data.class_names):  # (N, classes)
        raise CalibrationError(f"the model has {ref.shape[1]} classes but the evaluation data has "
                               f"{len(data.class_names)} class folders; evaluate on the model's own classes")
    out = output_metrics(name, ref, cand)  # rel L2, global cosine, max abs; no second run
    cos = np.sum(ref * cand, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1) + 1e-12)
    result: dict[str, Any] = {
        "images": int(len(data.labels)), "data": data.source, "classes": len(data.class_names),
        "fp32_top1": topk_accuracy(ref, data.labels, 1), "int8_top1": topk_accuracy(cand, data.labels, 1),
        "top1_agreement": float(np.mean(ref.argmax(1) == cand.argmax(1))),
        "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "cosine_global": out.cosine,
        "rel_l2": out.rel_l2, "max_abs": out.max_abs,
    }
    result["top1_drop_points"] = 100.0 * (result["fp32_top1"] - result["int8_top1"])
    if ref.shape[1] >= 5:
        result["fp32_top5"] = topk_accuracy(ref, data.labels, 5)
        result["int8_top5"] = topk_accuracy(cand, data.labels, 5)
    result["target"] = {"max_drop_points": TARGET_DROP_POINTS, "min_agreement": TARGET_AGREEMENT,
                        "met": result["top1_drop_points"] <= TARGET_DROP_POINTS
                        and result["top1_agreement"] >= TARGET_AGREEMENT}
    return result


def report_table(report: dict[str, Any], title: str = "FP32 vs INT8 (ONNX Runtime CPU)") -> Any:
    """A rich table of :func:`accuracy_report`'s result."""
    from rich.table import Table

    table = Table(title=f"{title}, {report['images']} held-out images")
    table.add_column("metric")
    table.add_column("FP32", justify="right")
    table.add_column("INT8", justify="right")
    table.add_row("top-1", f"{report['fp32_top1']:.2%}", f"{report['int8_top1']:.2%}")
    if "fp32_top5" in report:
        table.add_row("top-5", f"{report['fp32_top5']:.2%}", f"{report['int8_top5']:.2%}")
    table.add_row("top-1 drop", "", f"{report['top1_drop_points']:+.2f} pt")
    table.add_row("top-1 agreement", "", f"{report['top1_agreement']:.2%}")
    table.add_row("logits cosine (mean / min)", "", f"{report['cosine_mean']:.5f} / {report['cosine_min']:.5f}")
    table.add_row("logits rel. L2", "", f"{report['rel_l2']:.4f}")
    met = report["target"]["met"]
    table.add_row("target (drop ≤ 0.5 pt, agreement ≥ 99%)", "", "[green]met[/]" if met else "[red]missed[/]")
    return table
