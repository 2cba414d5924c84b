"""``psvit.export.tensorrt.build_engine`` with the real TensorRT-RTX builder (it builds on a CPU-only
machine). PSViT graphs are built in test_export_graph.py / test_export_api.py / test_export_224.py; here
the builder's own behaviour: profiles, static graphs, parser and option errors, missing packages."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from psvit.errors import MissingDependencyError
from psvit.export import EngineBuildError, build_engine
from psvit.export.tensorrt.build import DEFAULT_BATCH_PROFILE, resolve_builder

RTX = "TensorRT-RTX builds engines on CPU: pip install tensorrt-rtx"


def attention_graph(path, batch="batch", tokens=5, dtype=TensorProto.FLOAT, op="Softmax", domain=""):
    """x (B, N, 8) -> softmax(x W (x W)^T) x: a one-head attention, FP32 or FP16 typed."""
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np_dtype), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["q"], name="proj"),
        helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 2, 1], name="t"),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
        helper.make_node(op, ["s"], ["a"], name="softmax", axis=-1, domain=domain),
        helper.make_node("MatMul", ["a", "x"], ["y"], name="av"),
    ]
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", dtype, [batch, tokens, 8])],
                          [helper.make_tensor_value_info("y", dtype, [batch, tokens, 8])], [w])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(g, opset_imports=opsets)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def trt_rtx():
    return pytest.importorskip("tensorrt_rtx", reason=RTX)


@pytest.mark.trt
def test_dynamic_batch_gets_a_profile(tmp_path, trt_rtx):
    build = build_engine(attention_graph(tmp_path / "a.onnx"), builder="tensorrt_rtx", optimization_level=0)
    lo, opt, hi = DEFAULT_BATCH_PROFILE
    assert build.profile == {"x": [[lo, 5, 8], [opt, 5, 8], [hi, 5, 8]]}
    assert build.flavour == "tensorrt_rtx" and build.version == trt_rtx.__version__ and build.plan
    engine = build.save(tmp_path / "a.engine")
    assert engine.read_bytes() == build.plan
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


@pytest.mark.trt
def test_static_fp16_graph_and_profile_rules(tmp_path, trt_rtx):
    path = attention_graph(tmp_path / "s.onnx", batch=2, dtype=TensorProto.FLOAT16)
    build = build_engine(path, builder="tensorrt_rtx", optimization_level=0)
    assert build.profile is None
    with pytest.raises(EngineBuildError, match="fixed batch 2"):
        build_engine(path, builder="tensorrt_rtx", batch=(1, 2, 4))
    dyn = attention_graph(tmp_path / "d.onnx")
    with pytest.raises(EngineBuildError, match="min <= opt <= max"):
        build_engine(dyn, builder="tensorrt_rtx", batch=(4, 2, 8))
    with pytest.raises(EngineBuildError, match="0..5"):
        build_engine(dyn, builder="tensorrt_rtx", optimization_level=9)
    two = attention_graph(tmp_path / "two.onnx", tokens="tokens")
    with pytest.raises(EngineBuildError, match="dynamic dims besides the batch"):
        build_engine(two, builder="tensorrt_rtx")


@pytest.mark.trt
def test_parser_errors_are_reported(tmp_path, trt_rtx):
    path = attention_graph(tmp_path / "bad.onnx", op="NoSuchOp", domain="com.example")
    with pytest.raises(EngineBuildError, match="cannot parse") as info:
        build_engine(path, builder="tensorrt_rtx")
    assert "NoSuchOp" in str(info.value)
    with pytest.raises(EngineBuildError, match="does not exist"):
        build_engine(tmp_path / "missing.onnx", builder="tensorrt_rtx")


def test_flavour_errors():
    with pytest.raises(EngineBuildError, match="unknown TensorRT flavour"):
        resolve_builder("tensorrt12")
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here; the missing-package message cannot be shown")
    with pytest.raises(MissingDependencyError, match="pip install tensorrt "):
        resolve_builder("tensorrt")
