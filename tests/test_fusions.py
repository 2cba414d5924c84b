"""Backend fusions of our graphs: ONNX Runtime's optimizer (real sessions, through psvit.runtime) fuses the
GELU of every MLP with its bias and folds the attention scale, in FP32, INT8 and at every opset; FP16 and
INT8-with-FP16 graphs keep the fusable patterns; a GELU in another form is caught; ``inspect --fusions``."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from psvit import create_model
from psvit.errors import ArtifactError
from psvit.cli import main
from psvit.export import ExportError, convert_fp16, export_onnx
from psvit.export.fusions import fusion_problems, onnxruntime_fusions
from psvit.export.graph_checks import fusable_patterns, pattern_problems
from psvit.export.inputs import random_images
from psvit.runtime.ort_profile import op_type_totals

pytest.importorskip("onnxruntime", reason="fusions are ONNX Runtime's: pip install onnxruntime")
MICRO = create_model("psvit_micro").cfg  # 6 blocks in 3 stages; blocks 3 and 5 share their predecessor's map


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fusions")
    return {mode: export_onnx("psvit_micro", folder / f"micro.{mode}.onnx", shared_attention=mode, count=2)
            for mode in ("map", "qk")}


@pytest.mark.parametrize("mode", ["map", "qk"])
def test_onnxruntime_fuses_gelu_bias_and_attention_scale(exports, mode):
    result = exports[mode]
    report = onnxruntime_fusions(result.path, batch=3, runs=3)
    softmax = MICRO.num_attention_maps if mode == "map" else MICRO.depth
    maps = MICRO.num_attention_maps  # ORT's CSE merges a qk sharer's recomputed map with its owner's
    assert report.problems == [] and report.note == ""
    assert report.fused["BiasGelu"] == MICRO.depth  # GELU fused in every MLP, fc1's bias folded in
    assert report.gelu_fused == MICRO.depth and "Erf" not in report.optimized_ops
    assert report.exported_ops["Softmax"] == softmax and report.optimized_ops["Softmax"] == maps
    assert report.fused["FusedMatMul"] >= maps  # every Q·Kᵀ with its scale folded
    assert report.expected == {"gelu_fused": MICRO.depth, "gelu_bias_folded": MICRO.depth, "Erf": 0,
                               "qk_fused_matmul": maps}
    assert report.gelu_bias_folded == MICRO.depth
    assert report.patterns == {"gelu": 6, "unfusable_erf": 0, "bias_gelu": 6, "softmax": softmax,
                               "qk_scaled": softmax}
    assert result.graph.patterns == report.patterns and result.graph.ok  # the export's own graph check
    # time by op type, from the same session's profiler: the fused ops ran, once per MLP / per map
    assert report.time_by_op["BiasGelu"]["calls_per_run"] == MICRO.depth
    assert report.time_by_op["Softmax"]["calls_per_run"] == maps
    assert sum(v["share"] for v in report.time_by_op.values()) == pytest.approx(1.0)


def test_opset_17_export_fuses_in_onnxruntime(tmp_path):
    result = export_onnx("psvit_micro", tmp_path / "o17.onnx", opset=17, count=2)
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "Gelu" not in ops and "Erf" in ops  # no Gelu op before opset 20: the erf form, re-associated
    assert result.graph.ok and result.graph.patterns["unfusable_erf"] == 0
    report = onnxruntime_fusions(result.path, runs=0)
    assert report.problems == [] and report.fused["BiasGelu"] == 6 and report.time_by_op is None


def test_fixed_batch_folds_every_bias_into_gemm(tmp_path):
    path = export_onnx("psvit_micro", tmp_path / "b2.onnx", batch=2, count=2).path
    report = onnxruntime_fusions(path, runs=0)
    assert report.problems == []
    # static shapes: ORT turns every MatMul + bias into a Gemm (fc1's too, the GELU follows it)
    gemms = create_model("psvit_micro", exportable=True).weight_gemms()  # Q, K and V: three each
    assert report.fused["Gemm"] == gemms - 1  # the head is a Gemm already
    assert report.gelu_bias_folded == 6 and "BiasGelu" not in report.fused and "Erf" not in report.optimized_ops


def _exporter_form_gelu(path, half: float = 0.5):
    """An image classifier (N, 1, 1, 8) -> MatMul -> Add(bias) -> x * (half * (1 + erf(x / √2))): the GELU
    form the exporter emits below opset 20, which ORT's GeluFusion does not match. Saved to ``path``."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([-1, 8], np.int64), "flat"),
             numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(math.sqrt(2), np.float32), "root2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(half, np.float32), "half")]
    nodes = [helper.make_node("Reshape", ["images", "flat"], ["x"]), helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["hb"]), helper.make_node("Div", ["hb", "root2"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]), helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["half", "e1"], ["g"]), helper.make_node("Mul", ["hb", "g"], ["logits"])]
    graph = helper.make_graph(
        nodes, "gelu", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 1, 1, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return model


def test_gelu_in_another_form_is_caught_by_graph_check_and_onnxruntime(tmp_path):
    model = _exporter_form_gelu(tmp_path / "gelu.onnx")
    patterns = fusable_patterns(model)
    assert (patterns.gelu, patterns.unfusable_erf) == (0, 1)
    assert "0 GELU(s) in a fusable form for 1 MLPs (1 Erf in another form)" in pattern_problems(patterns, 1)[0]
    # ONNX Runtime really leaves it unfused (no psvit metadata: no expectations until we set them)
    report = onnxruntime_fusions(tmp_path / "gelu.onnx", batch=2, runs=2)
    assert report.expected == {} and report.problems == [] and "BiasGelu" not in report.fused
    assert report.optimized_ops["Erf"] == 1 and report.time_by_op["Erf"]["calls_per_run"] == 1
    report.expected = {"gelu_fused": 1, "gelu_bias_folded": 1, "Erf": 0, "qk_fused_matmul": 0}
    problems = fusion_problems(report)
    assert len(problems) == 2 and "GELU fused in 0 of 1 MLPs (1 Erf left)" in problems[0]
    # and a constant that is not 0.5 is no GELU at all
    assert fusable_patterns(_exporter_form_gelu(tmp_path / "not_gelu.onnx", half=1.0)).gelu == 0


def test_fp16_graph_keeps_fusable_patterns(exports, tmp_path):
    fp32 = onnx.load(str(exports["qk"].path))
    fp16, _ = convert_fp16(fp32, random_images(2, (3, 32, 32)))
    assert fusable_patterns(fp16) == fusable_patterns(fp32)
    path = tmp_path / "micro.fp16.onnx"
    onnx.save(fp16, str(path))
    report = onnxruntime_fusions(path, runs=0)
    assert report.problems == [] and "no FP16 GELU/Softmax kernels" in report.note and report.expected == {}


def test_int8_graphs_keep_the_fusions(demo_fp32_onnx, tmp_path):
    from psvit import load_checkpoint
    from psvit.calibration import quantize_onnx

    cfg = load_checkpoint("demo").config
    fp32_rest = quantize_onnx(demo_fp32_onnx, tmp_path / "int8.fp32.onnx", calib_data="synthetic", calib_count=8,
                              keep_fp32=True)
    report = onnxruntime_fusions(fp32_rest.path, runs=0)
    assert report.problems == [], report.problems
    assert report.fused["BiasGelu"] == cfg.depth  # Q/DQ at the GEMM inputs does not split GELU from its bias
    linear = [n for n in fp32_rest.recipe.quantize if fp32_rest.recipe.kinds[n] == "linear"]
    assert report.fused["MatMulIntegerToFloat"] == len(linear) > 4 * cfg.depth - 1  # every Linear an int8 GEMM
    fp16_rest = quantize_onnx(demo_fp32_onnx, tmp_path / "int8.onnx", calib_data="synthetic", calib_count=8)
    assert fusable_patterns(onnx.load(str(fp16_rest.path))).to_dict() == report.patterns


def test_profile_skips_warm_up_runs(tmp_path):
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 90, "args": {"op_name": "LayerNormalization"}},
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 20},
              {"cat": "Node", "name": "a_kernel_time", "ts": 205, "dur": 4, "args": {"op_name": "LayerNormalization"}},
              {"cat": "Node", "name": "b_kernel_time", "ts": 210, "dur": 6, "args": {"op_name": "MatMul"}}]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    warm = op_type_totals(path, runs=2, skip_runs=1)
    assert warm["LayerNormalization"]["ms_per_run"] == pytest.approx(0.004)
    assert warm["MatMul"] == {"ms_per_run": pytest.approx(0.006), "calls_per_run": 1.0, "share": pytest.approx(0.6)}
    assert op_type_totals(path, runs=2)["LayerNormalization"]["ms_per_run"] == pytest.approx(0.047)


def test_inspect_fusions_json(exports, capsys):
    code = main(["inspect", str(exports["map"].path), "--fusions", "--json", "--runs", "2", "--batch", "2"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    f = data["fusions"]
    assert f["fused"]["BiasGelu"] == 6 and f["problems"] == [] and f["batch"] == 2 and f["runs"] == 2
    assert f["fused_description"]["BiasGelu"] == "bias Add + GELU" and f["providers"] == ["CPUExecutionProvider"]
    assert f["time_by_op"]["BiasGelu"]["calls_per_run"] == 6 and data["attention_maps"] == 4


def test_inspect_fusions_errors(exports, tmp_path, capsys):
    assert main(["inspect", str(exports["map"].path), "--fusions", "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err
    with pytest.raises(ArtifactError, match="does not exist"):
        onnxruntime_fusions(tmp_path / "missing.onnx")
