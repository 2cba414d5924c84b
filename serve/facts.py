"""What an artifact says about itself, in the terms a Triton model configuration needs.

ONNX files are read from their graph and ``psvit.*`` metadata (no weights, no session). Engines cannot be
deserialized without a GPU, so their facts come from the sidecar (:func:`read_engine_facts`, the one place
that reads engine facts) and the ONNX the sidecar names, when that file is still there and unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..provenance import sha256_file
from .errors import ServeError

# ONNX TensorProto element types -> Triton data types (the only ones an image classifier of ours carries).
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16"}
# psvit-export's graph conventions, used for an engine whose ONNX is gone (see read_engine_facts).
_EXPORT_OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class TensorFacts:
    """One model input or output: name, Triton data type, dims without the batch axis."""

    name: str
    data_type: str  # "TYPE_FP32" | "TYPE_FP16"
    dims: tuple[int, ...]


@dataclass
class ModelFacts:
    """An artifact as Triton sees it."""

    kind: str  # "onnx" | "engine"
    path: Path
    input: TensorFacts
    output: TensorFacts
    static_batch: int | None  # a graph with a fixed batch axis
    min_batch: int  # engines: the profile's range
    max_batch: int | None  # None: any
    precision: str
    class_names: list[str] | None
    preprocess: dict[str, Any] | None
    flavour: str | None = None  # engines: "tensorrt" | "tensorrt_rtx"
    provenance: dict[str, Any] = field(default_factory=dict)  # ONNX metadata or the engine sidecar
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return self.output.dims[-1]


def _onnx_tensor(value: Any, where: str) -> tuple[TensorFacts, int | str | None]:
    """(facts without the batch axis, the batch dim: an int, a symbolic name or None)."""
    t = value.type.tensor_type
    dtype = _ONNX_TO_TRITON.get(t.elem_type)
    if dtype is None:
        raise ServeError(f"{where}: {value.name!r} has ONNX element type {t.elem_type}; only float32/float16 "
                         f"image classifiers can be served")
    dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    if len(dims) < 2 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise ServeError(f"{where}: {value.name!r} has shape {dims}; expected a batch axis followed by fixed dims")
    batch = dims[0] if dims[0] != 0 else None
    return TensorFacts(value.name, dtype, tuple(int(d) for d in dims[1:])), batch


def read_onnx_facts(path: str | os.PathLike) -> ModelFacts:
    """Facts of an ``.onnx`` image classifier: one (N, C, H, W) input, (N, classes) first output."""
    from ..export.metadata import read_metadata
    from ..export.onnx_io import load_onnx_graph

    path = Path(path)
    model = load_onnx_graph(path, "pass an .onnx file written by `psvit-export onnx`")
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or not graph.output:
        raise ServeError(f"{path} is not an image classifier graph: {len(inputs)} inputs, {len(graph.output)} outputs "
                         f"(one (N, C, H, W) input expected)")
    inp, in_batch = _onnx_tensor(inputs[0], str(path))
    out, _ = _onnx_tensor(graph.output[0], str(path))
    if len(inp.dims) != 3 or len(out.dims) != 1:
        raise ServeError(f"{path}: input dims {inp.dims} / output dims {out.dims}; expected (C, H, W) images in "
                         f"and (classes,) logits out")
    meta = read_metadata(model)
    static = in_batch if isinstance(in_batch, int) else None
    names = meta.get("psvit.class_names")
    pre = meta.get("psvit.preprocess")
    return ModelFacts(
        kind="onnx", path=path, input=inp, output=out, static_batch=static, min_batch=1, max_batch=static,
        precision=str(meta.get("psvit.precision") or ("fp16" if inp.data_type == "TYPE_FP16" else "fp32")),
        class_names=list(names) if isinstance(names, list) else None,
        preprocess=pre if isinstance(pre, dict) else None,
        provenance={k: v for k, v in meta.items() if k.startswith("psvit.")},
    )


def read_engine_facts(path: str | os.PathLike) -> ModelFacts:
    """Facts of a TensorRT / TensorRT-RTX plan, from its sidecar (the only function that reads engine facts).

    The batch range, input name and shape, precision, class names and preprocessing come from the sidecar.
    Output name and the I/O data types come from the ONNX the engine was built from when it is still there
    with the sidecar's sha256; otherwise psvit-export's conventions are assumed (output ``logits``, FP32 I/O:
    its FP16/INT8 graphs keep FP32 inputs and outputs) and a note says so. An engine without a sidecar is
    refused (the sidecar error says how to rebuild it): nothing else states what the plan was built for.
    """
    from ..runtime.tensorrt.sidecar import read_sidecar

    path = Path(path)
    if not path.is_file():
        raise ServeError(f"engine file {path} does not exist; build one with `psvit-export trt`")
    sidecar = read_sidecar(path)  # EngineMismatchError (a PSViTError) names the rebuild command
    shapes = sidecar.profile or {k: [v, v, v] for k, v in (sidecar.static_shapes or {}).items()}
    if len(shapes) != 1:
        raise ServeError(f"engine {path} records {len(shapes)} inputs in its sidecar; one image input expected")
    (input_name, (lo, _opt, hi)), = shapes.items()
    static = None if sidecar.profile else int(lo[0])
    notes: list[str] = []
    onnx_path = Path(sidecar.onnx_path)
    if onnx_path.is_file() and sha256_file(onnx_path) == sidecar.onnx_sha256:
        onnx = read_onnx_facts(onnx_path)
        inp, out = onnx.input, onnx.output
    else:
        classes = len(sidecar.class_names) if sidecar.class_names else (sidecar.model_config or {}).get("num_classes")
        if not classes:
            raise ServeError(f"engine {path}: its sidecar records no class count and its ONNX {onnx_path} is gone; "
                             f"rebuild the engine with `psvit-export trt`")
        inp = TensorFacts(input_name, "TYPE_FP32", tuple(int(d) for d in hi[1:]))
        out = TensorFacts(_EXPORT_OUTPUT_NAME, "TYPE_FP32", (int(classes),))
        notes.append(f"the engine's ONNX {onnx_path} is missing or changed, so the output name and I/O types "
                     f"follow psvit-export's conventions ({out.name!r}, FP32); check them against the engine")
    return ModelFacts(
        kind="engine", path=path, input=inp, output=out, static_batch=static, min_batch=int(lo[0]),
        max_batch=int(hi[0]), precision=sidecar.precision, class_names=sidecar.class_names,
        preprocess=sidecar.preprocess, flavour=sidecar.flavour, provenance={"sidecar": sidecar.to_dict()},
        notes=notes,
    )


def read_facts(path: str | os.PathLike) -> ModelFacts:
    """Facts of an ``.onnx`` file or an engine (with its sidecar); the runtime's detector tells which."""
    from ..runtime.api import artifact_kind

    kind = artifact_kind(path)
    if kind == "onnxruntime":
        return read_onnx_facts(path)
    if kind == "tensorrt":
        return read_engine_facts(path)
    raise ServeError(f"{path}: a Triton repository is made from an .onnx file or an engine, not a {kind} "
                     f"artifact; export one with `psvit-export onnx` or `psvit-export trt`")
