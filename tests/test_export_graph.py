"""Graph properties and numerics of traced PSViT graphs (micro configs, FP32 and FP16, map and qk), and
TensorRT-RTX builds of every one of them. Real exporter, real ONNX Runtime, real TensorRT-RTX builder."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from psvit import PSViTConfig, create_model
from psvit.export import (
    FP16_MAX_REL_L2, FP32_MAX_REL_L2, check_graph, compare, convert_fp16, torch_to_onnx,
)
from psvit.export.graph_checks import (
    duplicated_initializers, infer_shapes, non_static_tensors, shape_op_counts, softmax_consumers,
)
from psvit.export.inputs import random_images
from psvit.runtime import from_model, load
from psvit.export.sources import ModelSource
from psvit.model import Attention

# 1d pooling with max then avg, a chain of three blocks on one map (2 shares 3 and 4), and a pair in stage 2.
CHAIN_1D = PSViTConfig(
    img_size=32, patch_size=4, num_classes=10, dims=(32, 48, 64), depths=(2, 3, 2), heads=(2, 3, 4),
    pool_kinds="1d", pool_ops=("max", "avg"), share=(3, 4, 6), mean=(0.5,) * 3, std=(0.25,) * 3,
)
DEIT_MICRO = PSViTConfig(img_size=32, patch_size=4, num_classes=10, dims=(64,), depths=(3,), heads=(4,))
CASES = {
    "micro-map": ("psvit_micro", "map"),
    "micro-qk": ("psvit_micro", "qk"),
    "chain1d-map": (CHAIN_1D, "map"),
    "chain1d-qk": (CHAIN_1D, "qk"),
    "deit-micro": (DEIT_MICRO, "map"),
}


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial norms and biases (the default init leaves them at 1/0, hiding mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias") or name in ("cls_token",):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def make_source(cfg_or_name, mode: str) -> ModelSource:
    model = randomize(create_model(cfg_or_name, exportable=True, shared_attention=mode))
    return ModelSource(model=model, config=model.cfg, description=f"test model {cfg_or_name!s:.40}")


def torch_runtime(src: ModelSource):
    """The source's model on the runtime's PyTorch backend (as export verification runs it)."""
    return from_model(src.model, name=src.description)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict:
    """Each case traced once: (source, fp32 proto, fp16 proto, inputs, fp32 path, fp16 path)."""
    out = {}
    folder = tmp_path_factory.mktemp("graphs")
    for key, (cfg, mode) in CASES.items():
        src = make_source(cfg, mode)
        fp32 = torch_to_onnx(src.model)
        inputs = random_images(4, (3, 32, 32), seed=1)
        fp16, report = convert_fp16(fp32, inputs)
        paths = []
        for tag, proto in (("fp32", fp32), ("fp16", fp16)):
            path = folder / f"{key}.{tag}.onnx"
            onnx.save(proto, str(path))
            paths.append(path)
        out[key] = dict(src=src, mode=mode, fp32=fp32, fp16=fp16, fp16_report=report, inputs=inputs,
                        paths=paths)
    return out


@pytest.mark.parametrize("key", list(CASES))
def test_no_shape_computation(graphs, key):
    for proto in (graphs[key]["fp32"], graphs[key]["fp16"]):
        assert shape_op_counts(proto) == {}
        assert not any(n.op_type == "Shape" for n in proto.graph.node)


@pytest.mark.parametrize("key", list(CASES))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_dim_concrete_except_batch(graphs, key, precision):
    inferred = infer_shapes(graphs[key][precision])
    assert non_static_tensors(inferred, "batch") == []
    assert len(inferred.graph.value_info) > 50  # inference really ran over the graph
    assert inferred.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("key", list(CASES))
def test_one_softmax_per_attention_map(graphs, key):
    case = graphs[key]
    cfg = case["src"].config
    for precision in ("fp32", "fp16"):
        consumers = softmax_consumers(case[precision])
        if case["mode"] == "map":
            assert len(consumers) == cfg.num_attention_maps
            # each shared map feeds the A.V product of its owner and of every sharer
            owners = cfg.map_owner
            expected = sorted(sum(1 for o in owners if o == b) for b in range(cfg.depth) if owners[b] == b)
            assert sorted(consumers) == expected
        else:
            assert len(consumers) == cfg.depth
            assert set(consumers) == {1}


def test_chain_of_three_shares_one_map(graphs):
    assert max(softmax_consumers(graphs["chain1d-map"]["fp32"])) == 3
    assert len(softmax_consumers(graphs["chain1d-qk"]["fp32"])) == CHAIN_1D.depth


@pytest.mark.parametrize("key", list(CASES))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_full_graph_checks(graphs, key, precision):
    case = graphs[key]
    model = case["src"].model
    # one product per Linear layer, Q, K and V projected from the rows of qkv by three
    gemms = sum(isinstance(m, torch.nn.Linear) for m in model.modules()) + 2 * sum(
        isinstance(m, Attention) for m in model.modules())
    assert model.weight_gemms() == gemms
    report = check_graph(case[precision], config=case["src"].config, modes=model.shared_attention,
                         batch=None, weight_gemms=gemms)
    assert report.ok, report.problems
    assert duplicated_initializers(case[precision]) == []
    onnx.checker.check_model(case[precision], full_check=True)


@pytest.mark.parametrize("key", list(CASES))
def test_fp32_parity(graphs, key):
    case = graphs[key]
    result = compare(torch_runtime(case["src"]), load(case["fp32"].SerializeToString()), case["inputs"],
                     max_rel_l2=FP32_MAX_REL_L2)
    assert result.passed, result.worst_rel_l2
    assert result.outputs[0].shape == (4, 10)


@pytest.mark.parametrize("key", list(CASES))
def test_fp16_parity_and_precision(graphs, key):
    case = graphs[key]
    runner = load(case["fp16"].SerializeToString())
    assert runner.backend.input_dtype == np.float32  # FP32 I/O by default
    result = compare(torch_runtime(case["src"]), runner, case["inputs"], max_rel_l2=FP16_MAX_REL_L2)
    assert result.passed, result.worst_rel_l2
    assert result.top1_agreement is not None
    types = {i.data_type for i in case["fp16"].graph.initializer if i.data_type in (1, 10)}
    assert onnx.TensorProto.FLOAT16 in types
    for node in case["fp16"].graph.node:
        if node.op_type == "LayerNormalization":  # kept FP32: fed by a Cast to float or an FP32 tensor
            assert any(i.endswith("__fp32") for i in node.input[1:]), node.name


def test_random_batch_sizes_run(graphs):
    runner = load(graphs["micro-map"]["paths"][0])
    for n in (1, 3, 7):
        assert runner.infer(random_images(n, (3, 32, 32))).shape == (n, 10)


@pytest.mark.trt
@pytest.mark.parametrize("key", list(CASES))
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_rtx_builds(graphs, key, precision):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX builds engines on CPU: pip install tensorrt-rtx")
    from psvit.export import build_engine

    path = graphs[key]["paths"][0 if precision == "fp32" else 1]
    build = build_engine(path, builder="tensorrt_rtx", batch=(1, 4, 8), optimization_level=0)
    assert len(build.plan) > 100_000
    assert build.profile == {"images": [[1, 3, 32, 32], [4, 3, 32, 32], [8, 3, 32, 32]]}
