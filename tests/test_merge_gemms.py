"""Q, K and V: three GEMMs in the FP32 export, merged back into one before INT8 quantization
(psvit.calibration.merge_gemms), so that ONNX Runtime runs every quantized projection as an integer GEMM."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'psvit-deploy[onnx]'")
pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime: pip install onnxruntime")

from psvit import PSViTConfig, create_model  # noqa: E402
from psvit.calibration import quantize_onnx  # noqa: E402
from psvit.checkpoint import save_checkpoint  # noqa: E402
from psvit.calibration.merge_gemms import merge_sibling_gemms  # noqa: E402
from psvit.export import export_onnx  # noqa: E402
from psvit.export.fusions import onnxruntime_fusions  # noqa: E402
from psvit.export.graph_checks import weight_matmul_count  # noqa: E402
from psvit.runtime import load  # noqa: E402

from test_export_graph import randomize  # noqa: E402

# The last block owns its map (its class-only Q reads a Slice of the normed tokens); block 2 shares block 1's.
CFG = PSViTConfig(img_size=32, patch_size=4, num_classes=10, dims=(32, 48), depths=(3, 2), heads=(2, 3),
                  pool_kinds="1d", pool_ops=("max",), share=(2,), mean=(0.5,) * 3, std=(0.25,) * 3)
OWN_MAPS = CFG.depth - len(CFG.share)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("merge")
    save_checkpoint(randomize(create_model(CFG)), folder / "m.safetensors")  # non-zero biases: a lost one shows
    return export_onnx(folder / "m.safetensors", folder / "m.onnx", count=2).path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    with load(path) as rt:
        return rt.infer(x)


def test_export_projects_q_k_v_separately(fp32: Path) -> None:
    model = onnx.load(str(fp32))
    assert "Split" not in Counter(n.op_type for n in model.graph.node)
    assert weight_matmul_count(model) == create_model(CFG, exportable=True).weight_gemms()


def _reading_slices(model: "onnx.ModelProto") -> int:
    """Weight MatMuls that read a Slice (the pooling's class-token Linear; the last block's class-only Q)."""
    weights = {i.name for i in model.graph.initializer}
    sliced = {n.output[0] for n in model.graph.node if n.op_type == "Slice"}
    return sum(n.op_type == "MatMul" and n.input[1] in weights and n.input[0] in sliced for n in model.graph.node)


def test_merge_keeps_the_function(fp32: Path, tmp_path: Path) -> None:
    model = onnx.load(str(fp32))
    before = weight_matmul_count(model)
    assert _reading_slices(model) == 2
    assert merge_sibling_gemms(model) == OWN_MAPS  # one group per block with its own Q and K
    onnx.checker.check_model(model, full_check=True)
    assert weight_matmul_count(model) == before - 2 * OWN_MAPS  # the last block's Q too: its Slice moved after
    assert _reading_slices(model) == 1 and Counter(n.op_type for n in model.graph.node)["Split"] == OWN_MAPS
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), np.float32)
    onnx.save(model, str(tmp_path / "merged.onnx"))
    ref = _run(fp32, x)
    np.testing.assert_allclose(_run(tmp_path / "merged.onnx", x), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert merge_sibling_gemms(model) == 0  # nothing left to merge


def test_int8_runs_every_projection_as_an_integer_gemm(fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.int8.onnx"
    # 13 images in batches of 4: the last batch is short
    result = quantize_onnx(fp32, out, calib_data="synthetic", calib_count=13, calib_batch=4, keep_fp32=True)
    quantized = sum(k == "linear" for k in (result.recipe.kinds[n] for n in result.recipe.quantize))
    report = onnxruntime_fusions(out, runs=0, keep_optimized=tmp_path / "optimized.onnx")
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert report.optimized_ops == dict(Counter(n.op_type for n in optimized.graph.node))
    ops = Counter(n.op_type for n in optimized.graph.node)
    merged = onnx.load(str(fp32))
    merge_sibling_gemms(merged)
    assert quantized == weight_matmul_count(merged) - 1  # every weight product but the head, Q, K, V as one
    assert ops["MatMulIntegerToFloat"] == quantized
    producer = {o: n for n in optimized.graph.node for o in n.output}
    left = [n.name for n in optimized.graph.node if n.op_type == "MatMul"
            and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)]
    assert left == [], f"float MatMuls on dequantized inputs: {left}"
