"""Provenance in the artifact: ``metadata_props`` of the ONNX model, ``psvit.*`` keys, JSON values."""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from ..metadata import PREFIX, decode_metadata
from ..provenance import package_versions
from .onnx_io import load_onnx_graph

if TYPE_CHECKING:
    import onnx

    from .fp16 import Fp16Report
    from .sharing import SharingPlan
    from .sources import ModelSource

FORMAT = "psvit-onnx/1"
RANDOM_WEIGHTS = "random-weights"
EXPORTER = "torch.onnx.export(dynamo=True) + onnxscript optimizer (no CSE)"
VERSIONED_PACKAGES = ("torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "onnxconverter-common")


def build_metadata(
    *,
    source: "ModelSource",
    plan: "SharingPlan",
    precision: str,
    io_precision: str,
    batch: int | None,
    opset: int,
    input_name: str,
    fp16: "Fp16Report | None" = None,
) -> dict[str, str]:
    """Every ``psvit.*`` key an exported model carries (values are strings; structured ones JSON)."""
    cfg = source.config
    meta: dict[str, Any] = {
        "format": FORMAT,
        "config": cfg.to_json(),
        "variant": source.variant or "",
        "class_names": json.dumps(source.class_names),
        "input": json.dumps({
            "name": input_name, "shape": ["batch" if batch is None else batch, cfg.in_chans, cfg.img_size,
                                          cfg.img_size],
            "dtype": "float16" if io_precision == "fp16" else "float32",
        }),
        "preprocess": json.dumps(source.preprocess),
        "precision": precision,
        "io_precision": io_precision,
        "batch": "dynamic" if batch is None else str(batch),
        "shared_attention": json.dumps(plan.to_dict()),
        "opset": str(opset),
        "exporter": EXPORTER,
        "versions": json.dumps(package_versions(*VERSIONED_PACKAGES)),
        "source": source.description,
        "source_sha256": source.sha256 or RANDOM_WEIGHTS,
        "random_weights": json.dumps(source.random_weights),
        "seed": json.dumps(source.seed),
    }
    if fp16 is not None:
        meta["fp16"] = json.dumps(fp16.to_dict())
    return {PREFIX + k: str(v) for k, v in meta.items()}


def set_metadata(model: "onnx.ModelProto", meta: dict[str, str]) -> None:
    """Write ``meta`` into ``model.metadata_props``, replacing keys that are already there."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    for key, value in [*kept, *meta.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(model: "onnx.ModelProto | str | os.PathLike") -> dict[str, Any]:
    """The decoded metadata of a model or an ONNX file (weights are not read)."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = load_onnx_graph(model, "pass an .onnx file (`psvit-export onnx` writes one)")
    return decode_metadata({p.key: p.value for p in model.metadata_props})


def update_metadata_file(path: str | os.PathLike, meta: dict[str, str]) -> None:
    """Rewrite the metadata of a saved ONNX file in place; external weight files are left untouched."""
    import onnx

    model = load_onnx_graph(path)
    set_metadata(model, meta)
    onnx.save_model(model, str(path))
