"""``quantize_onnx``: FP32 PSViT ONNX -> explicit Q/DQ INT8 ONNX (ORT ``quantize_static``, QDQ format).

Order: calibrate (or reuse the cache) on the FP32 graph -> insert Q/DQ with ORT on the recipe's nodes ->
convert the non-quantized part to FP16 with :func:`psvit.export.convert_fp16` (LayerNorm, Q/DQ, MatMul and
Conv stay FP32-typed so every DQ feeds its GEMM directly, the pattern TensorRT fuses) -> metadata -> atomic
write. Graph inputs/outputs stay FP32.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import require
from ..outputs import Output, OutputKind, check_outputs
from ..provenance import atomic_output, sha256_file
from .cache import CacheKey, default_cache_path, reusable_ranges, write_cache
from .data import DEFAULT_BATCH, CalibrationSet, CalibSpec, load_calibration_set, require_data
from .errors import CalibrationError
from .methods import ORT_METHOD, check_method, entropy_ranges, mse_ranges, ort_extra_options, parameters
from .model import load_fp32_model
from ..export.onnx_io import name_nodes
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("path", "cache_path", "fp32_path"):
            d[k] = str(d[k])
        return d


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """Silence ORT quantization's root-logger advice (pre-processing hints) and calibrator prints."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


class ArrayReader:
    """ORT ``CalibrationDataReader`` over preprocessed images in batches (a fixed-batch graph gets its batch)."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int, static_batch: int | None) -> None:
        self.images, self.input_name = images, input_name
        self.batch = static_batch or batch
        self.static = static_batch is not None
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), self.batch):
            part = self.images[start:start + self.batch]  # (B, C, H, W)
            if self.static and len(part) < self.batch:  # repeat images to fill a fixed batch
                part = np.resize(part, (self.batch, *part.shape[1:]))
            yield {self.input_name: np.ascontiguousarray(part, np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch)


def qdq_count(model: Any) -> int:
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def ort_quantize(
    model_in: Path, q_path: Path, reader: ArrayReader | None, nodes: list[str], method: str, ort_cache: Path
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
        with _quiet_ort():
            qz.quantize_static(
                str(model_in), str(q_path), reader, quant_format=qz.QuantFormat.QDQ,
                op_types_to_quantize=list(OP_TYPES), per_channel=True,
                activation_type=qz.QuantType.QInt8, weight_type=qz.QuantType.QInt8,
                nodes_to_quantize=nodes, calibrate_method=getattr(qz.CalibrationMethod, ORT_METHOD[method]),
                extra_options=extra, calibration_cache_path=str(ort_cache),
            )
    except ValueError as exc:
        raise CalibrationError(f"ONNX Runtime quantization failed: {exc}") from exc


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
) -> QuantizeResult:
    """Quantize a PSViT FP32 ONNX to Q/DQ INT8 (a checkpoint is refused: :mod:`psvit.pipeline` exports it first).

    Args:
        calib_data: image folder, ``.npy``/``.npz``, ``"synthetic"`` or a preprocessed float32 (N, C, H, W)
            array. None is refused.
        calib_count: at most this many calibration images (None: 256); calib_batch: images per
            calibration run (None: 16; a fixed-batch graph uses its batch).
        calib_method: ``max`` | ``percentile`` | ``entropy`` | ``mse``.
        calib_cache: calibration cache (None: ``out_path + ".calib.json"``); reused when model, data and
            method match; another model's cache is refused unless ``force_recalibrate``.
        exclude: regexes on node names kept out of INT8, on top of the recipe.
        quantize_qk: also quantize Q·Kᵀ inputs.
        keep_fp32: leave the non-quantized part FP32 (default FP16).
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
    require_data(calib_data)  # before any export: no data, no calibration

    with tempfile.TemporaryDirectory(prefix="psvit-calib.") as tmpdir:
        tmp = Path(tmpdir)
        fp32 = load_fp32_model(onnx_path)
        data: CalibrationSet = load_calibration_set(calib_data, preprocess=fp32.preprocess,
                                                    input_shape=fp32.input_shape, count=calib_count)
        if data.skipped:
            say(f"skipped {len(data.skipped)} unreadable image files (first: {data.skipped[0]})")
        say(f"{len(data)} calibration images ({data.source.get('kind')})")

        proto = onnx.load(str(fp32.path))
        name_nodes(proto)
        recipe = plan_recipe(proto, quantize_qk=quantize_qk, exclude=tuple(exclude))
        model_in = tmp / "named.onnx"
        onnx.save(proto, str(model_in))

        fp32_sha = sha256_file(fp32.path)
        key = CacheKey(fp32_sha, data.fingerprint, len(data), method, parameters(method))
        ranges = reusable_ranges(cache, key, force_recalibrate)
        reused = ranges is not None
        ort_cache = tmp / "ort_ranges.json"
        reader = ArrayReader(data.images, fp32.input_name, calib_batch or DEFAULT_BATCH, fp32.static_batch)
        t_cal = time.perf_counter()
        if reused:
            say(f"reusing calibration cache {cache}")
            ort_cache.write_text(json.dumps(ranges))
        elif method in ("mse", "entropy"):
            say(f"calibrating ({'histograms, MSE range search' if method == 'mse' else 'Entropy, 512 bins'})")
            from onnxruntime.quantization.calibrate import save_tensors_data

            compute = mse_ranges if method == "mse" else entropy_ranges
            with _quiet_ort():
                save_tensors_data(compute(model_in, reader, OP_TYPES, tmp), ort_cache)
            reader.rewind()
        else:
            say(f"calibrating ({ORT_METHOD[method]})")
        q_path = tmp / "int8.onnx"
        ort_quantize(model_in, q_path, reader, recipe.quantize, method, ort_cache)
        calib_seconds = 0.0 if reused else time.perf_counter() - t_cal
        ranges_payload = json.loads(ort_cache.read_text())
        if not reused:
            write_cache(cache, key, ranges_payload, data.source, calib_seconds)
            say(f"wrote calibration cache {cache}")

        qmodel = onnx.load(str(q_path))
        rest = "fp32"
        if not keep_fp32:
            from ..export import convert_fp16

            say("converting the non-quantized part to FP16")
            qmodel, _report = convert_fp16(qmodel, data.images[:FP16_SAMPLES], keep_fp32_ops=FP16_KEEP_OPS)
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
        fp32_path = fp32.path
        with atomic_output(out, suffix=".onnx") as tmp_out:
            onnx.save(qmodel, str(tmp_out))
    say(f"wrote {out} ({count} Q/DQ nodes, rest {rest})")
    return QuantizeResult(
        path=out, cache_path=cache, cache_sha256=cache_sha, cache_reused=reused, method=method, qdq_nodes=count,
        seconds=time.perf_counter() - t_start, calibration_seconds=calib_seconds, images=len(data),
        skipped=data.skipped, recipe=recipe, fp32_path=fp32_path, precision_rest=rest, calibration_data=data.source,
    )
