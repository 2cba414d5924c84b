"""224x224 variants (slow, still run in CI): DeiT-Tiny FP16 end to end, PSViT-2D-Tiny with per-stage
``auto`` sharing (qk, qk, map) in FP32 and FP16, and TensorRT-RTX builds of all of them."""
from __future__ import annotations

import onnx
import pytest

from psvit.export import (
    FP16_MAX_REL_L2, check_graph, compare, convert_fp16, export_onnx, inspect_onnx,
)
from psvit.export.inputs import random_images
from psvit.runtime import from_model, load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("e224")


@pytest.fixture(scope="module")
def deit_fp16(folder):
    return export_onnx("deit_tiny", folder / "deit_tiny.fp16.onnx", fp16=True, count=2)


@pytest.fixture(scope="module")
def psvit_auto(folder):
    fp32 = export_onnx("psvit_2d_tiny", folder / "psvit_2d_tiny.onnx", shared_attention="auto", count=2)
    x = random_images(2, (3, 224, 224), seed=3)
    fp16, _ = convert_fp16(onnx.load(str(fp32.path)), x)
    path16 = folder / "psvit_2d_tiny.fp16.onnx"
    onnx.save(fp16, str(path16))
    return fp32, path16, x


def test_deit_tiny_fp16(deit_fp16):
    r = deit_fp16
    assert r.graph.ok and r.graph.softmax == 12 and r.graph.shape_ops == {}
    assert r.verification[0].worst_rel_l2 <= 1e-5 and r.verification[1].worst_rel_l2 <= FP16_MAX_REL_L2
    assert r.verification[1].top1_agreement is not None
    assert inspect_onnx(r.path).tokens_per_stage == [197]


def test_psvit_2d_tiny_auto(psvit_auto):
    fp32, path16, x = psvit_auto
    assert fp32.sharing.modes == ("qk", "qk", "map")
    # stage 0: 4 own maps; stage 1 (qk, 50 tokens): 6 Softmax; stage 2 (map, 17 tokens): 2 maps for 4 blocks
    assert fp32.graph.softmax == 4 + 6 + 2 and fp32.graph.ok
    assert sorted(fp32.graph.softmax_consumers)[-2:] == [2, 2]
    assert inspect_onnx(fp32.path).tokens_per_stage == [197, 50, 17]
    report = check_graph(path16, config=fp32.source.config, modes=fp32.sharing.modes, batch=None)
    assert report.ok, report.problems
    result = compare(from_model(fp32.source.model, name=fp32.source.description), load(path16), x,
                     max_rel_l2=FP16_MAX_REL_L2)
    assert result.passed, result.worst_rel_l2


@pytest.mark.trt
def test_tensorrt_rtx_builds_224(deit_fp16, psvit_auto):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX builds engines on CPU: pip install tensorrt-rtx")
    from psvit.export import build_engine

    for path in (deit_fp16.path, psvit_auto[0].path, psvit_auto[1]):
        build = build_engine(path, builder="tensorrt_rtx", batch=(1, 8, 32), optimization_level=0)
        assert len(build.plan) > 1_000_000, path
