"""``quantize_onnx``: FP32 PSViT ONNX -> explicit Q/DQ INT8 ONNX (ORT ``quantize_static``, QDQ format).

Order: calibrate (or reuse the cache) on the FP32 graph, streaming the images batch by batch
(:mod:`psvit.calibration.collect`) -> insert Q/DQ with ORT on the recipe's nodes, from those ranges ->
convert the non-quantized part to FP16 with :func:`psvit.export.convert_fp16` (LayerNorm, Q/DQ, MatMul and
Conv stay FP32-typed so every DQ feeds its GEMM directly, the pattern TensorRT fuses) -> metadata -> atomic
write. Graph inputs/outputs stay FP32.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import require
from ..outputs import Output, OutputKind, check_outputs
from ..provenance import atomic_output, sha256_file
from .cache import CacheKey, default_cache_path, reusable_ranges, write_cache
from .collect import calibrate_ranges, quiet_ort
from .data import DEFAULT_BATCH, CalibSpec, load_calibration_set, require_data
from .errors import CalibrationError
from .methods import ORT_METHOD, check_method, count_warning, ort_extra_options, parameters
from .model import Fp32Model, load_fp32_model, quantization_graph
from .progress import ProgressCallback, peak_rss_bytes
from .recipe import OP_TYPES, Recipe, plan_recipe

FP16_KEEP_OPS = ("LayerNormalization", "QuantizeLinear", "DequantizeLinear")
FP16_SAMPLES = 8


@dataclass
class QuantizeResult:
    """The INT8 artifact and how it was made."""

    path: Path
    cache_path: Path
    cache_sha256: str
    cache_reused: bool
    method: str
    qdq_nodes: int
    seconds: float
    calibration_seconds: float
    images: int
    skipped: list[str]
    recipe: Recipe
    fp32_path: Path
    precision_rest: str  # "fp16" | "fp32"
    calibration_data: dict[str, Any] = field(default_factory=dict)
    seconds_per_image: float = 0.0  # calibration seconds per image (0 when the cache was reused)
    peak_rss_bytes: int = 0  # peak resident memory of this process when quantize_onnx returned
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("path", "cache_path", "fp32_path"):
            d[k] = str(d[k])
        return d


def qdq_count(model: Any) -> int:
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def ort_quantize(
    model_in: Path, q_path: Path, reader: Any, nodes: list[str], method: str, ort_cache: Path
) -> None:
    """ORT ``quantize_static`` in QDQ format with the PSViT settings; ranges come from ``ort_cache`` when it
    exists (no calibration pass), otherwise ORT calibrates with ``reader`` and writes them there."""
    qz = require("onnxruntime.quantization", "onnxruntime", "INT8 calibration")
    extra = {
        "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1, "Conv": 0},
        "OpTypesToExcludeOutputQuantization": list(OP_TYPES),  # Q/DQ at GEMM inputs only
        **ort_extra_options(method),
    }
    try:
        with quiet_ort():
            qz.quantize_static(
                str(model_in), str(q_path), reader, quant_format=qz.QuantFormat.QDQ,
                op_types_to_quantize=list(OP_TYPES), per_channel=True,
                activation_type=qz.QuantType.QInt8, weight_type=qz.QuantType.QInt8,
                nodes_to_quantize=nodes, calibrate_method=getattr(qz.CalibrationMethod, ORT_METHOD[method]),
                extra_options=extra, calibration_cache_path=str(ort_cache),
            )
    except ValueError as exc:
        raise CalibrationError(f"ONNX Runtime quantization failed: {exc}") from exc


_FP32_ONLY_METADATA = ("verification", "checks")  # facts about the FP32 graph that the INT8 graph does not share


def _metadata(fp32_sha256: str, result: dict[str, Any]) -> dict[str, str]:
    from ..export.metadata import PREFIX
    from ..provenance import package_versions

    return {
        PREFIX + "precision": "int8",
        PREFIX + "calibration": json.dumps(result),
        PREFIX + "fp32_sha256": fp32_sha256,
        PREFIX + "quantizer": "onnxruntime.quantization.quantize_static (QDQ) + psvit.calibration recipe",
        PREFIX + "versions": json.dumps(package_versions("onnxruntime", "onnx", "onnxconverter-common")),
    }


def _drop_fp32_only_metadata(model: Any) -> None:
    """ORT copies the FP32 file's metadata; its verification and graph-check results are not the INT8 graph's."""
    from ..export.metadata import PREFIX

    kept = [(p.key, p.value) for p in model.metadata_props
            if p.key not in {PREFIX + k for k in _FP32_ONLY_METADATA}]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def quantize_onnx(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    calib_data: CalibSpec | None,
    calib_count: int | None = None,
    calib_batch: int | None = None,
    calib_method: str = "max",
    calib_cache: str | os.PathLike | None = None,
    force_recalibrate: bool = False,
    exclude: tuple[str, ...] | list[str] = (),
    quantize_qk: bool = False,
    keep_fp32: bool = False,
    log: Callable[[str], None] | None = None,
    progress: ProgressCallback | None = None,
    on_fp32: Callable[[Fp32Model], None] | None = None,
) -> QuantizeResult:
    """Quantize a PSViT FP32 ONNX to Q/DQ INT8 (a checkpoint is refused: :mod:`psvit.pipeline` exports it first).

    Args:
        calib_data: image folder, ``.npy``/``.npz``, ``"synthetic"`` or a preprocessed float32 (N, C, H, W)
            array. None is refused. Images are read batch by batch, never all at once.
        calib_count: at most this many calibration images (None: 512); fewer than the method needs
            (:data:`psvit.calibration.methods.MIN_IMAGES`) gives a warning. calib_batch: images per
            calibration run (None: 16; a fixed-batch graph uses its batch); the ranges do not depend on it.
        calib_method: ``max`` | ``percentile`` | ``entropy`` | ``mse``.
        calib_cache: calibration cache (None: ``out_path + ".calib.json"``); reused when model, data and
            method match; another model's cache is refused unless ``force_recalibrate``.
        exclude: regexes on node names kept out of INT8, on top of the recipe.
        quantize_qk: also quantize Q·Kᵀ inputs.
        keep_fp32: leave the non-quantized part FP32 (default FP16).
        log: called with one line per stage; warnings (also in the result) start with ``"warning: "``.
        progress: called after every calibration batch (:class:`psvit.calibration.progress.CalibrationProgress`:
            images done, images/s, seconds left in the pass).
        on_fp32: called with the checked FP32 model before any calibration work (the CLI checks
            ``--eval-data`` against the model there, so that its problems surface before anything is written).
    """
    import onnx

    require("onnxruntime.quantization", "onnxruntime", "INT8 calibration")
    method, cache_path = calib_method, calib_cache
    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    check_method(method)
    if calib_batch is not None and calib_batch < 1:
        raise CalibrationError(f"--calib-batch must be at least 1, got {calib_batch}")
    out = Path(out_path)
    cache = Path(cache_path) if cache_path is not None else default_cache_path(out)
    check_outputs([Output(out, OutputKind.ONNX), Output(cache, OutputKind.JSON, "--calib-cache")],
                  inputs=[onnx_path, calib_data])  # before calibrating
    require_data(calib_data)  # no data, no calibration
    warnings: list[str] = []

    with tempfile.TemporaryDirectory(prefix="psvit-calib.") as tmpdir:
        tmp = Path(tmpdir)
        fp32 = load_fp32_model(onnx_path)
        data = load_calibration_set(calib_data, preprocess=fp32.preprocess, input_shape=fp32.input_shape,
                                    count=calib_count)
        if on_fp32 is not None:
            on_fp32(fp32)
        for note in data.notes:  # files skipped and why; fewer images found than --calib-count asked
            warnings.append(note)
            say(f"warning: {note}")
        say(f"{len(data)} calibration images ({data.source.get('kind')})")
        too_few = count_warning(method, len(data))
        if too_few:
            warnings.append(too_few)
            say(f"warning: {too_few}")

        proto = quantization_graph(fp32.path)
        recipe = plan_recipe(proto, quantize_qk=quantize_qk, exclude=tuple(exclude))
        model_in = tmp / "named.onnx"
        onnx.save(proto, str(model_in))
        del proto

        fp32_sha = sha256_file(fp32.path)
        key = CacheKey(fp32_sha, data.fingerprint, len(data), method, parameters(method))
        ranges = reusable_ranges(cache, key, force_recalibrate)
        reused = ranges is not None
        ort_cache = tmp / "ort_ranges.json"
        calib_seconds = 0.0
        if reused:
            say(f"reusing calibration cache {cache}")
            ort_cache.write_text(json.dumps(ranges))
        else:
            from onnxruntime.quantization.calibrate import save_tensors_data

            batch = fp32.static_batch or calib_batch or DEFAULT_BATCH
            say(f"calibrating ({method}: {'1 pass' if method == 'max' else '2 passes'} over {len(data)} images, "
                f"batches of {batch})")
            calibration = calibrate_ranges(model_in, data, method=method, input_name=fp32.input_name,
                                           batch=batch, static_batch=fp32.static_batch,
                                           op_types=OP_TYPES, workdir=tmp, progress=progress)
            calib_seconds = calibration.seconds
            save_tensors_data(calibration.ranges, ort_cache)
        q_path = tmp / "int8.onnx"
        ort_quantize(model_in, q_path, None, recipe.quantize, method, ort_cache)
        ranges_payload = json.loads(ort_cache.read_text())
        per_image = calib_seconds / len(data) if not reused else 0.0
        if not reused:
            write_cache(cache, key, ranges_payload, data.source, calib_seconds,
                        run={"seconds_per_image": round(per_image, 6), "passes": calibration.passes,
                             "batch": batch, "peak_rss_bytes": peak_rss_bytes()})
            say(f"wrote calibration cache {cache}")

        qmodel = onnx.load(str(q_path))
        _drop_fp32_only_metadata(qmodel)
        rest = "fp32"
        if not keep_fp32:
            from ..export import convert_fp16

            say("converting the non-quantized part to FP16")
            qmodel, _report = convert_fp16(qmodel, data.take(FP16_SAMPLES), keep_fp32_ops=FP16_KEEP_OPS)
            rest = "fp16"
        cache_sha = sha256_file(cache)
        count = qdq_count(qmodel)
        info = {
            "method": method, "ort_method": ORT_METHOD[method], "parameters": parameters(method),
            "cache_sha256": cache_sha, "cache_file": cache.name, "cache_path": str(cache), "images": len(data),
            "skipped": len(data.skipped),
            "data": {**data.source, "fingerprint": data.fingerprint}, "recipe": recipe.summary(),
            "qdq_nodes": count, "non_quantized_precision": rest,
        }
        from ..export.metadata import set_metadata

        set_metadata(qmodel, _metadata(fp32_sha, info))
        with atomic_output(out, suffix=".onnx") as tmp_out:
            onnx.save(qmodel, str(tmp_out))
    say(f"wrote {out} ({count} Q/DQ nodes, rest {rest})")
    return QuantizeResult(
        path=out, cache_path=cache, cache_sha256=cache_sha, cache_reused=reused, method=method, qdq_nodes=count,
        seconds=time.perf_counter() - t_start, calibration_seconds=calib_seconds, images=len(data),
        skipped=data.skipped, recipe=recipe, fp32_path=fp32.path, precision_rest=rest, calibration_data=data.source,
        seconds_per_image=per_image, peak_rss_bytes=peak_rss_bytes(), warnings=warnings,
    )
