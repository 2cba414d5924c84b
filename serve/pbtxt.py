"""Triton model configurations (``config.pbtxt``) built as tritonclient's ``ModelConfig`` protobuf messages.

Building the message (instead of formatting text) means every field name and enum is checked by protobuf
as it is set; :func:`render` prints the text format Triton reads and :func:`parse` reads it back, which
is how repositories are validated where no Triton can load them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import require
from .errors import ServeError, check_at_least
from .facts import ModelFacts

LABELS_FILE = "labels.txt"
IMAGE_INPUT = "image"  # encoded PNG/JPEG bytes, one per request row
TOPK_OUTPUTS = (("labels", "TYPE_STRING"), ("probabilities", "TYPE_FP32"), ("indices", "TYPE_INT32"))
KINDS = ("auto", "cpu", "gpu")


def _pb() -> Any:
    """tritonclient's ``model_config_pb2`` (the ``serve`` extra)."""
    return require("tritonclient.grpc.model_config_pb2", "'psvit-deploy[serve]'", "Triton model configurations")


@dataclass(frozen=True)
class Batching:
    """Dynamic batching of one model: the most rows per execution and how long requests may wait."""

    max_batch: int
    max_queue_delay_us: int = 1000
    preferred: tuple[int, ...] = ()
    instances: int = 1

    def check(self) -> None:
        check_at_least((("--max-batch", self.max_batch, 1), ("--max-queue-delay-us", self.max_queue_delay_us, 0),
                        ("--instances", self.instances, 1)))
        bad = [b for b in self.preferred if not 1 <= b <= self.max_batch]
        if bad:
            raise ServeError(f"--preferred-batch {bad} outside 1..{self.max_batch} (the max batch)")


def _tensor(entry: Any, pb: Any, name: str, data_type: str, dims: tuple[int, ...]) -> Any:
    entry.name = name
    entry.data_type = pb.DataType.Value(data_type)
    entry.dims.extend(dims)
    return entry


def _batching(cfg: Any, pb: Any, batching: Batching, kind: str) -> None:
    cfg.max_batch_size = batching.max_batch
    cfg.dynamic_batching.SetInParent()  # present even when every field keeps its default
    cfg.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    cfg.dynamic_batching.preferred_batch_size.extend(batching.preferred)
    group = cfg.instance_group.add()
    group.kind = pb.ModelInstanceGroup.Kind.Value(f"KIND_{kind.upper()}")
    group.count = batching.instances


def model_config(name: str, facts: ModelFacts, batching: Batching, kind: str = "auto") -> Any:
    """The main model: ``onnxruntime`` backend for ONNX, ``tensorrt_plan`` for engines.

    ``kind`` ``auto`` places engines on GPUs and ONNX models on CPUs.
    """
    pb = _pb()
    if kind not in KINDS:
        raise ServeError(f"instance kind {kind!r}: use {', '.join(KINDS)}")
    if kind == "auto":
        kind = "gpu" if facts.kind == "engine" else "cpu"
    if facts.kind == "engine" and kind != "gpu":
        raise ServeError("an engine runs on a GPU only; leave the instance kind at auto or gpu")
    cfg = pb.ModelConfig(name=name)
    if facts.kind == "engine":
        cfg.platform = "tensorrt_plan"
    else:
        cfg.backend = "onnxruntime"
    _tensor(cfg.input.add(), pb, facts.input.name, facts.input.data_type, facts.input.dims)
    out = _tensor(cfg.output.add(), pb, facts.output.name, facts.output.data_type, facts.output.dims)
    if facts.class_names:
        out.label_filename = LABELS_FILE
    _batching(cfg, pb, batching, kind)
    return cfg


def preprocess_config(name: str, facts: ModelFacts, batching: Batching) -> Any:
    """Python-backend model: encoded image bytes -> the main model's input, as the artifact records."""
    pb = _pb()
    cfg = pb.ModelConfig(name=name, backend="python")
    _tensor(cfg.input.add(), pb, IMAGE_INPUT, "TYPE_STRING", (1,))
    _tensor(cfg.output.add(), pb, facts.input.name, facts.input.data_type, facts.input.dims)
    _batching(cfg, pb, batching, "cpu")
    cfg.parameters["preprocess"].string_value = json.dumps(facts.preprocess)
    return cfg


def postprocess_config(name: str, facts: ModelFacts, batching: Batching, topk: int) -> Any:
    """Python-backend model: logits -> the top-k labels, probabilities (softmax) and class indices."""
    pb = _pb()
    cfg = pb.ModelConfig(name=name, backend="python")
    _tensor(cfg.input.add(), pb, facts.output.name, facts.output.data_type, facts.output.dims)
    for out_name, data_type in TOPK_OUTPUTS:
        _tensor(cfg.output.add(), pb, out_name, data_type, (topk,))
    _batching(cfg, pb, batching, "cpu")
    cfg.parameters["topk"].string_value = str(topk)
    cfg.parameters["class_names"].string_value = json.dumps(facts.class_names)
    return cfg


def ensemble_config(name: str, model: str, preprocess: str, postprocess: str, facts: ModelFacts, max_batch: int,
                    topk: int) -> Any:
    """``image`` bytes -> preprocess -> the model -> top-k: one request from a client that sends a file."""
    pb = _pb()
    cfg = pb.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch)
    _tensor(cfg.input.add(), pb, IMAGE_INPUT, "TYPE_STRING", (1,))
    for out_name, data_type in TOPK_OUTPUTS:
        _tensor(cfg.output.add(), pb, out_name, data_type, (topk,))
    steps = cfg.ensemble_scheduling.step
    pre = steps.add(model_name=preprocess, model_version=-1)
    pre.input_map[IMAGE_INPUT] = IMAGE_INPUT
    pre.output_map[facts.input.name] = "preprocessed"
    main = steps.add(model_name=model, model_version=-1)
    main.input_map[facts.input.name] = "preprocessed"
    main.output_map[facts.output.name] = "logits"
    post = steps.add(model_name=postprocess, model_version=-1)
    post.input_map[facts.output.name] = "logits"
    for out_name, _ in TOPK_OUTPUTS:
        post.output_map[out_name] = out_name
    return cfg


def render(cfg: Any) -> str:
    """The ``config.pbtxt`` text of a ``ModelConfig`` message."""
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)


def parse(text_or_path: str | os.PathLike) -> Any:
    """A ``config.pbtxt`` (text or file) parsed into tritonclient's ``ModelConfig``; bad text raises ServeError."""
    from google.protobuf import text_format

    pb = _pb()
    is_path = isinstance(text_or_path, os.PathLike) or (isinstance(text_or_path, str) and "\n" not in text_or_path
                                                        and text_or_path.endswith(".pbtxt"))
    text = Path(text_or_path).read_text() if is_path else str(text_or_path)
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise ServeError(f"not a valid Triton model configuration: {exc}") from exc
