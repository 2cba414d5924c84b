"""``export_onnx``: checkpoint -> verified ONNX (FP32 or FP16), the stages wired in one place.

source -> sharing plan -> dynamo trace + clean-up (:mod:`.trace`) -> [FP16 conversion (:mod:`.fp16`)]
-> metadata -> temporary file -> graph checks (:mod:`.graph_checks`) -> ONNX Runtime vs PyTorch
(:func:`.verify.compare`) -> rename onto ``out``. A failed check leaves no file behind unless
``strict=False`` turns failures into warnings.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..runtime import from_model, load
from .errors import ExportError, GraphCheckError, VerificationError
from .fp16 import DEFAULT_HEADROOM, Fp16Report, convert_fp16
from .graph_checks import GraphReport, check_graph
from .inputs import DEFAULT_COUNT, sample_inputs
from .metadata import PREFIX, build_metadata, set_metadata, update_metadata_file
from .save import atomic_onnx_output, check_output_path, initializer_bytes, needs_external_data, save_onnx
from .sharing import SharingPlan, check_sharing_options, plan_shared_attention
from .sources import ModelSource, load_source
from .trace import BATCH_SYMBOL, DEFAULT_OPSET, INPUT_NAME, check_opset, parse_batch, torch_to_onnx
from .verify import FP16_MAX_REL_L2, FP32_MAX_REL_L2, VERIFY_CHUNK, Comparison, compare, require_close

_KEEP_HINT = "The artifact was not written; --no-verify-strict keeps it anyway (not recommended)."


@dataclass
class ExportResult:
    """What was exported and the evidence that it is right."""

    path: Path
    source: ModelSource
    precision: str  # "fp32" | "fp16"
    io_precision: str
    batch: int | None
    opset: int
    sharing: SharingPlan
    graph: GraphReport
    verification: list[Comparison]
    fp16: Fp16Report | None
    metadata: dict[str, str]
    size_bytes: int
    external_data: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "source": self.source.description, "random_weights": self.source.random_weights,
            "precision": self.precision, "io_precision": self.io_precision,
            "batch": "dynamic" if self.batch is None else self.batch, "opset": self.opset,
            "shared_attention": self.sharing.to_dict(), "graph": self.graph.to_dict(),
            "verification": [c.to_dict() for c in self.verification],
            "fp16": self.fp16.to_dict() if self.fp16 else None, "size_bytes": self.size_bytes,
            "external_data": str(self.external_data) if self.external_data else None,
            "seconds": self.seconds, "warnings": self.warnings,
        }


def _verification_summary(comparisons: list[Comparison]) -> str:
    return json.dumps([
        {"reference": c.reference, "candidate": c.candidate, "samples": c.samples, "rel_l2": c.worst_rel_l2,
         "max_rel_l2": c.max_rel_l2, "top1_agreement": c.top1_agreement, "passed": c.passed}
        for c in comparisons
    ])


def export_onnx(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    variant: str | None = None,
    fp16: bool = False,
    fp16_io: bool = False,
    batch: str | int = "dynamic",
    shared_attention: str = "map",
    qk_min_tokens: int | None = None,
    opset: int = DEFAULT_OPSET,
    data: str | os.PathLike | None = None,
    count: int = DEFAULT_COUNT,
    strict: bool = True,
    seed: int = 0,
    fp16_converter: str = "onnxconverter-common",
    fp16_headroom: float = DEFAULT_HEADROOM,
    max_rel_l2: float | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export ``source`` to ``out`` and verify it.

    Args:
        source: checkpoint path (``.safetensors``; ``.pth`` needs ``variant``), ``"demo"`` or a variant name
            (random weights drawn with ``seed``; flagged in the metadata).
        fp16: FP16-typed graph (LayerNormalization and overflowing nodes FP32); ``fp16_io`` keeps its
            inputs/outputs FP16 too.
        batch: ``"dynamic"`` or a fixed positive batch.
        shared_attention: ``map``, ``qk`` or ``auto`` (per stage by token count; ``qk_min_tokens``).
        data: image folder or ``.npy``/``.npz`` for verification and FP16 ranges (None: random images).
        count: number of verification samples.
        strict: a failed graph check or verification raises (and writes nothing); False makes it a warning.
        max_rel_l2: tolerance of the final verification; None means 1e-5 (FP32) or 2e-3 (FP16).
        log: called with one line per stage (progress).
    """
    say = log or (lambda _msg: None)
    times: dict[str, float] = {}
    notes: list[str] = []  # failures downgraded to warnings (strict=False)
    # Cheap checks first: bad options fail before any tracing.
    if fp16_io and not fp16:
        raise ExportError("--fp16-io only applies to an FP16 export; add --fp16 or drop --fp16-io")
    fixed_batch = parse_batch(batch)
    check_opset(opset)
    out = check_output_path(out, inputs=[source, data])
    check_sharing_options(shared_attention, qk_min_tokens)
    if max_rel_l2 is not None and not max_rel_l2 > 0:
        raise ExportError(f"the verification tolerance must be positive, got {max_rel_l2}")

    t0 = time.perf_counter()
    src = load_source(source, variant=variant, seed=seed)
    cfg = src.config
    plan = plan_shared_attention(cfg, shared_attention, qk_min_tokens)
    src.model.set_shared_attention(plan.modes)
    inputs = sample_inputs(data, count=count, input_shape=(cfg.in_chans, cfg.img_size, cfg.img_size),
                           preprocess=src.preprocess, seed=seed)
    times["load"] = time.perf_counter() - t0
    say(f"source: {src.description}")

    say(f"tracing {src.variant or 'model'} (opset {opset}, batch {fixed_batch or 'dynamic'}, "
        f"shared attention {'/'.join(plan.modes)})")
    t0 = time.perf_counter()
    proto = torch_to_onnx(src.model, batch=fixed_batch, opset=opset)
    times["trace"] = time.perf_counter() - t0

    reference = from_model(src.model, name=src.description, class_names=src.class_names, chunk=VERIFY_CHUNK)
    comparisons: list[Comparison] = []
    fp16_report: Fp16Report | None = None
    external = needs_external_data(initializer_bytes(proto))
    if fp16:
        if external:
            raise ExportError(
                "FP16 conversion runs in memory and this model's FP32 weights exceed protobuf's 2 GB limit; "
                "export FP32 and convert with ModelOpt AutoCast from the file"
            )
        t0 = time.perf_counter()
        say("verifying the FP32 graph before conversion")
        fp32_check = compare(reference, load(proto.SerializeToString(), name="ONNX FP32 (before FP16)"), inputs,
                             max_rel_l2=FP32_MAX_REL_L2)
        comparisons.append(fp32_check)
        if fp32_check.passed is False:  # an FP16 error would be meaningless on top of a broken FP32 graph
            message = f"ONNX FP32 vs PyTorch: relative L2 error {fp32_check.worst_rel_l2:.3g} exceeds " \
                      f"{FP32_MAX_REL_L2:g}."
            if strict:
                raise VerificationError(f"{message} {_KEEP_HINT}")
            notes.append(message)
        say(f"converting to FP16 ({fp16_converter})")
        proto, fp16_report = convert_fp16(proto, inputs, keep_io_types=not fp16_io, converter=fp16_converter,
                                          headroom=fp16_headroom)
        times["fp16"] = time.perf_counter() - t0

    precision = "fp16" if fp16 else "fp32"
    io_precision = "fp16" if fp16_io else "fp32"
    meta = build_metadata(source=src, plan=plan, precision=precision, io_precision=io_precision,
                          batch=fixed_batch, opset=opset, input_name=INPUT_NAME, fp16=fp16_report)
    set_metadata(proto, meta)

    with atomic_onnx_output(out) as tmp:
        data_path = save_onnx(proto, tmp, data_name=f"{out.name}.data", external=external)
        t0 = time.perf_counter()
        say("checking the graph")
        # the in-memory proto is what was just written; only external weights need the file
        report = check_graph(tmp if external else proto, config=cfg, modes=plan.modes, batch=fixed_batch,
                             batch_symbol=BATCH_SYMBOL, weight_gemms=src.model.weight_gemms(),
                             raise_on_problem=False)
        times["checks"] = time.perf_counter() - t0
        if report.problems:
            message = "the exported graph fails its checks:\n  " + "\n  ".join(report.problems)
            if strict:
                raise GraphCheckError(f"{message}\n{_KEEP_HINT}")
            notes.append(message)
        t0 = time.perf_counter()
        say(f"verifying ONNX Runtime vs PyTorch on {len(inputs)} samples")
        tol = max_rel_l2 if max_rel_l2 is not None else (FP16_MAX_REL_L2 if fp16 else FP32_MAX_REL_L2)
        final = compare(reference, load(tmp, name=f"ONNX {precision.upper()} ({out.name})"), inputs,
                        max_rel_l2=tol)
        comparisons.append(final)
        times["verify"] = time.perf_counter() - t0
        what = f"ONNX {precision.upper()} vs PyTorch"
        if strict:
            require_close(final, what, _KEEP_HINT)
        elif final.passed is False:
            notes.append(f"{what}: relative L2 error {final.worst_rel_l2:.3g} exceeds {tol:g}")
        meta[PREFIX + "verification"] = _verification_summary(comparisons)
        meta[PREFIX + "checks"] = json.dumps({"ok": report.ok, "problems": report.problems})
        if external:  # rewrite the graph only; the weights file stays as verified
            update_metadata_file(tmp, meta)
        else:  # the proto in memory is the file: save it again rather than read it back first
            set_metadata(proto, meta)
            save_onnx(proto, tmp, external=False)
        size = tmp.stat().st_size
    if data_path is not None:
        data_path = out.with_name(data_path.name)
        size += data_path.stat().st_size
    return ExportResult(
        path=out, source=src, precision=precision, io_precision=io_precision, batch=fixed_batch, opset=opset,
        sharing=plan, graph=report, verification=comparisons, fp16=fp16_report, metadata=meta, size_bytes=size,
        external_data=data_path, seconds=times, warnings=notes,
    )

