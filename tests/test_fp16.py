"""FP16 conversion: what stays FP32 (LayerNorm, overflowing nodes, float shape arithmetic), FP16 I/O, and
that the result loads and runs in ONNX Runtime CPU."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from psvit import PSViTConfig, create_model, save_checkpoint
from psvit.export import ExportError, compare, convert_fp16, export_onnx, torch_to_onnx
from psvit.export.fp16 import FP16_MAX, shape_arithmetic_nodes
from psvit.export.inputs import random_images
from psvit.runtime import from_model, load
from psvit.export.sources import ModelSource

SMALL = PSViTConfig(img_size=32, patch_size=8, num_classes=5, dims=(32,), depths=(2,), heads=(2,))


def shape_scaled_graph() -> onnx.ModelProto:
    """x * (1 / sqrt(x.shape[-1])) @ W, then Cast(float) and Add: the timm-style scale computed from a
    shape at run time, which a naive onnxconverter-common conversion mistypes."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((6,)).astype(np.float32), "b")
    idx = numpy_helper.from_array(np.array(2, dtype=np.int64), "idx")
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "idx"], ["dim"], name="gather"),
        helper.make_node("Cast", ["dim"], ["dim_f"], to=TensorProto.FLOAT, name="cast_dim"),
        helper.make_node("Sqrt", ["dim_f"], ["root"], name="sqrt"),
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1.0, np.float32)),
                         name="one"),
        helper.make_node("Div", ["one", "root"], ["scale"], name="div"),
        helper.make_node("Mul", ["x", "scale"], ["xs"], name="mul"),
        helper.make_node("MatMul", ["xs", "w"], ["h"], name="matmul"),
        helper.make_node("Cast", ["h"], ["h32"], to=TensorProto.FLOAT, name="cast_act"),
        helper.make_node("Add", ["h32", "b"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "shape_scaled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6])], [w, b, idx],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return onnx.shape_inference.infer_shapes(model)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from psvit.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model.SerializeToString(), image_input=False).run(x)


def test_float_shape_arithmetic_stays_fp32_and_loads():
    model = shape_scaled_graph()
    assert shape_arithmetic_nodes(model) == ["cast_dim", "sqrt", "div"]
    x = np.random.default_rng(1).standard_normal((3, 4, 8)).astype(np.float32)
    converted, report = convert_fp16(model, x)
    assert report.shape_arithmetic_nodes == ["cast_dim", "sqrt", "div"]
    ref = run(model, x)
    out = run(converted, x)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-3
    matmul = next(n for n in converted.graph.node if n.name == "matmul")
    w = next(i for i in converted.graph.initializer if i.name == matmul.input[1])
    assert w.data_type == TensorProto.FLOAT16


def test_naive_conversion_of_the_same_graph_fails_to_load():
    """The pitfall the converter wrapper exists for (skip if onnxconverter-common ever fixes it)."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = float16.convert_float_to_float16(shape_scaled_graph(), keep_io_types=True)
    try:
        load(naive.SerializeToString(), image_input=False)
    except Exception as exc:  # ORT's Fail / InvalidGraph, as an ArtifactError
        assert "float" in str(exc)
    else:
        pytest.skip("this onnxconverter-common converts the graph correctly on its own")


@pytest.fixture(scope="module")
def overflow_case(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(SMALL, exportable=True).eval()
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.mul_(3e5)  # fc1 outputs far beyond the FP16 range
    src = ModelSource(model=model, config=SMALL, description="overflowing test model")
    fp32 = torch_to_onnx(model)
    x = random_images(4, (3, 32, 32), seed=2)
    fp16, report = convert_fp16(fp32, x)
    path = tmp_path_factory.mktemp("overflow") / "overflow.fp16.onnx"
    onnx.save(fp16, str(path))
    return src, fp16, report, x, path


def test_overflowing_nodes_stay_fp32(overflow_case):
    src, fp16, report, x, _ = overflow_case
    assert report.overflow_nodes and max(report.overflow_nodes.values()) > FP16_MAX
    assert report.overflow_threshold == pytest.approx(FP16_MAX / 8)
    fc1 = [n for n in fp16.graph.node if n.name in report.overflow_nodes and n.op_type == "MatMul"]
    assert fc1, "the fc1 MatMul must be kept FP32"
    # no FP32 -> fp16 -> FP32 detour between two nodes kept in FP32
    producer = {o: n for n in fp16.graph.node for o in n.output}
    for n in fp16.graph.node:
        if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT and n.input[0] in producer:
            up = producer[n.input[0]]
            assert not (up.op_type == "Cast" and up.attribute[0].i == TensorProto.FLOAT16), n.name
    result = compare(from_model(src.model, name=src.description), load(fp16.SerializeToString()), x, max_rel_l2=2e-3)
    assert np.isfinite(result.worst_rel_l2) and result.passed, result.worst_rel_l2


@pytest.fixture(scope="module")
def fp16_io_export(tmp_path_factory):
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("fp16io")
    save_checkpoint(create_model(SMALL).eval(), folder / "small.safetensors")
    return export_onnx(folder / "small.safetensors", folder / "small.fp16io.onnx", fp16=True, fp16_io=True, count=4)


def test_fp16_io_end_to_end(fp16_io_export):
    r = fp16_io_export
    model = onnx.load(str(r.path))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert r.io_precision == "fp16" and r.verification[-1].passed
    assert load(r.path).backend.input_dtype == np.float16


def test_unknown_converter_and_bad_headroom():
    proto = shape_scaled_graph()
    x = np.zeros((1, 4, 8), np.float32)
    with pytest.raises(ExportError, match="unknown FP16 converter"):
        convert_fp16(proto, x, converter="magic")
    with pytest.raises(ExportError, match="headroom"):
        convert_fp16(proto, x, headroom=0.5)


@pytest.mark.trt
def test_tensorrt_rtx_builds_fp16_variants(overflow_case, fp16_io_export):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX builds engines on CPU: pip install tensorrt-rtx")
    from psvit.export import build_engine

    for path in (overflow_case[-1], fp16_io_export.path):  # mixed FP32/FP16 nodes; FP16 graph I/O
        assert len(build_engine(path, builder="tensorrt_rtx", optimization_level=0).plan) > 10_000
