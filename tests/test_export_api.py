"""``psvit.export.export_onnx`` end to end: sources, batch, opset, metadata, atomic failure, external data."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from psvit import PSViTConfig, create_model, save_checkpoint
from psvit.errors import CheckpointError, ConfigError, OutputPathError, UnknownVariantError
from psvit.export import (
    DEFAULT_OPSET, ExportError, VerificationError, check_graph, export_onnx, inspect_onnx, read_metadata,
    torch_to_onnx,
)
from psvit.export.save import PROTOBUF_LIMIT, needs_external_data, save_onnx
from psvit.export.sharing import QK_MIN_TOKENS_GPU, plan_shared_attention
from psvit.export.inputs import random_images
from psvit.provenance import sha256_file
from psvit.runtime import load

SMALL = PSViTConfig(img_size=32, patch_size=8, num_classes=5, dims=(32,), depths=(2,), heads=(2,))


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "micro.safetensors"
    torch.manual_seed(3)
    model = randomize(create_model("psvit_micro"))
    save_checkpoint(model, path, class_names=[f"class{i}" for i in range(10)])
    return path


@pytest.fixture(scope="module")
def qk_fp16_export(micro_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "micro.fp16.onnx"
    return export_onnx(micro_ckpt, out, fp16=True, shared_attention="qk", count=4)


def test_checkpoint_fp16_qk_export(qk_fp16_export, micro_ckpt):
    r = qk_fp16_export
    assert r.path.is_file() and r.graph.ok
    assert [c.passed for c in r.verification] == [True, True]  # FP32 before conversion, then FP16
    assert r.verification[0].worst_rel_l2 <= 1e-5 and r.verification[1].worst_rel_l2 <= 2e-3
    assert r.graph.softmax == create_model("psvit_micro").cfg.depth  # qk: one Softmax per block
    assert not r.source.random_weights and r.source.sha256 == sha256_file(micro_ckpt)


def test_metadata_round_trip(qk_fp16_export, micro_ckpt):
    meta = read_metadata(qk_fp16_export.path)
    cfg = PSViTConfig.from_dict(meta["psvit.config"])
    assert cfg == create_model("psvit_micro").cfg
    assert meta["psvit.variant"] == "psvit_micro"
    assert meta["psvit.class_names"] == [f"class{i}" for i in range(10)]
    assert meta["psvit.input"] == {"name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32"}
    assert meta["psvit.preprocess"] == {"img_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "crop_pct": 1.0,
                                        "interpolation": "bilinear"}
    assert meta["psvit.precision"] == "fp16" and meta["psvit.io_precision"] == "fp32"
    assert meta["psvit.shared_attention"]["modes"] == ["qk", "qk", "qk"]
    assert meta["psvit.opset"] == DEFAULT_OPSET and meta["psvit.batch"] == "dynamic"
    assert meta["psvit.source_sha256"] == sha256_file(micro_ckpt) and meta["psvit.random_weights"] is False
    assert {"torch", "onnx", "onnxruntime", "onnxconverter-common"} <= set(meta["psvit.versions"])
    assert "LayerNormalization" in meta["psvit.fp16"]["kept_fp32_ops"]
    assert [v["passed"] for v in meta["psvit.verification"]] == [True, True]
    assert meta["psvit.checks"]["ok"] is True
    summary = inspect_onnx(qk_fp16_export.path)
    assert summary.tokens_per_stage == [65, 17, 5] and summary.attention_maps == 6
    assert summary.fp16_share > 0.9 and summary.shape_ops == 0 and summary.qdq["QuantizeLinear"] == 0


@pytest.fixture(scope="module")
def fixed_batch_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixed") / "b3.onnx"
    return export_onnx("psvit_micro", out, batch=3, count=5)  # 5 samples: two chunks, the last padded


def test_fixed_batch_variant_export(fixed_batch_export):
    r = fixed_batch_export
    model = onnx.load(str(r.path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 3, 32, 32]
    assert r.graph.symbolic_dims == [] and r.verification[0].passed
    meta = read_metadata(r.path)
    assert meta["psvit.random_weights"] is True and meta["psvit.source_sha256"] == "random-weights"
    assert meta["psvit.batch"] == 3 and "RANDOM WEIGHTS" in meta["psvit.source"]
    assert load(r.path).backend.limits.static == 3


@pytest.fixture(scope="module")
def pth_weights(tmp_path_factory):
    torch.manual_seed(5)
    pth = tmp_path_factory.mktemp("pth") / "weights.pth"
    torch.save(randomize(create_model("psvit_micro")).state_dict(), pth)
    return pth


@pytest.fixture(scope="module")
def opset17_export(pth_weights):
    return export_onnx(pth_weights, pth_weights.with_name("o17.onnx"), variant="psvit_micro", opset=17, count=3)


def test_pth_with_variant_and_opset17(opset17_export):
    r = opset17_export
    assert {o.version for o in onnx.load(str(r.path)).opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert r.graph.ok and r.verification[0].passed


def test_pth_errors(pth_weights, tmp_path):
    with pytest.raises(CheckpointError, match="--variant"):
        export_onnx(pth_weights, tmp_path / "x.onnx")
    with pytest.raises(CheckpointError, match="does not fit"):  # checkpoint/config mismatch
        export_onnx(pth_weights, tmp_path / "x.onnx", variant="deit_tiny")
    assert not (tmp_path / "x.onnx").exists()


def test_failed_verification_leaves_no_file(tmp_path):
    model = randomize(create_model(SMALL))
    ckpt = tmp_path / "small.safetensors"
    save_checkpoint(model, ckpt)
    out = tmp_path / "small.onnx"
    with pytest.raises(VerificationError, match="exceeds 1e-12"):
        export_onnx(ckpt, out, max_rel_l2=1e-12, count=2)
    assert list(tmp_path.glob("*.onnx*")) == []
    r = export_onnx(ckpt, out, max_rel_l2=1e-12, count=2, strict=False)  # downgraded to a warning
    assert out.is_file() and any("exceeds 1e-12" in w for w in r.warnings)
    assert read_metadata(out)["psvit.verification"][0]["passed"] is False


def test_option_errors_before_any_work(tmp_path):
    cases = [
        (dict(fp16_io=True), ExportError, "--fp16-io"),
        (dict(batch="0"), ExportError, "positive integer"),
        (dict(batch="many"), ExportError, "'dynamic' or a positive"),
        (dict(opset=16), ExportError, "opset 16 is not supported"),
        (dict(shared_attention="both"), ExportError, "map, qk, auto"),
        (dict(qk_min_tokens=40), ExportError, "only applies to --shared-attention auto"),
    ]
    for kwargs, error, text in cases:
        with pytest.raises(error, match=text):
            export_onnx("psvit_micro", tmp_path / "x.onnx", **kwargs)
    with pytest.raises(OutputPathError, match="does not exist"):
        export_onnx("psvit_micro", tmp_path / "missing" / "x.onnx")
    with pytest.raises(OutputPathError, match="must end in .onnx"):
        export_onnx("psvit_micro", tmp_path / "x.txt")
    with pytest.raises(UnknownVariantError, match="psvit_micro"):
        export_onnx("psvit_mciro", tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="ONNX file"):
        export_onnx(str(tmp_path / "m.onnx"), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_auto_plan_uses_measured_threshold():
    cfg = create_model("psvit_2d_tiny").cfg  # tokens 197, 50, 17
    plan = plan_shared_attention(cfg, "auto")
    assert plan.modes == ("qk", "qk", "map") and plan.qk_min_tokens == QK_MIN_TOKENS_GPU == 33
    assert "H200" in plan.threshold_source
    assert plan.effective_modes() == (None, "qk", "map")  # stage 0 has no sharing block
    override = plan_shared_attention(cfg, "auto", qk_min_tokens=10)
    assert override.modes == ("qk", "qk", "qk") and "override" in override.threshold_source


def test_external_data_decision():
    assert not needs_external_data(100 << 20)
    assert not needs_external_data(PROTOBUF_LIMIT - (65 << 20))
    assert needs_external_data(PROTOBUF_LIMIT - (60 << 20))
    assert needs_external_data(3 << 30)
    with pytest.raises(ValueError):
        needs_external_data(-1)


@pytest.fixture(scope="module")
def external_model(tmp_path_factory):
    model = randomize(create_model(SMALL, exportable=True))
    path = tmp_path_factory.mktemp("ext") / "ext.onnx"
    data = save_onnx(torch_to_onnx(model), path, external=True)
    return model, path, data


def test_external_data_branch_loads_and_checks(external_model):
    model, path, data = external_model
    assert data == path.with_name("ext.onnx.data") and data.stat().st_size > path.stat().st_size
    assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in onnx.load(str(path), load_external_data=False)
               .graph.initializer)
    report = check_graph(path, config=SMALL, modes=("map",), batch=None)
    assert report.ok
    x = random_images(2, (3, 32, 32))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(load(path).infer(x), expected, rtol=1e-4, atol=1e-5)
    assert inspect_onnx(path).external_data


@pytest.mark.trt
def test_tensorrt_rtx_builds_api_exports(fixed_batch_export, qk_fp16_export, opset17_export, external_model):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX builds engines on CPU: pip install tensorrt-rtx")
    from psvit.export import build_engine

    build = build_engine(fixed_batch_export.path, builder="tensorrt_rtx", optimization_level=0)
    assert build.profile is None and len(build.plan) > 100_000  # fixed batch: no profile
    for path in (qk_fp16_export.path, opset17_export.path, external_model[1]):  # external weights too
        build = build_engine(path, builder="tensorrt_rtx", optimization_level=0)
        assert build.profile is not None and len(build.plan) > 100_000, path
