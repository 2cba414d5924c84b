"""Profiling: statistics on known samples, warm-up parsing, ORT profile parsing, the bench CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import psvit
from psvit.cli import main
from psvit.runtime import RuntimeInputError, latency_stats, load, parse_warmup, profile_runtime
from psvit.runtime.ort_profile import op_type_totals
from psvit.runtime.profiler import Warmup, warm_up


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime", reason="ONNX Runtime runs the exported graph (pip install onnxruntime)")
    from psvit.export import export_onnx

    path = tmp_path_factory.getbasetemp() / "runtime_onnx" / "demo_dynamic.onnx"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        export_onnx("demo", path)
    return path


def test_latency_stats_on_known_samples():
    s = latency_stats([0.001, 0.002, 0.003, 0.004, 0.005], batch=2)  # 1..5 ms
    assert s.iterations == 5
    assert s.mean_ms == pytest.approx(3.0) and s.median_ms == pytest.approx(3.0)
    assert s.min_ms == pytest.approx(1.0) and s.max_ms == pytest.approx(5.0)
    assert s.p90_ms == pytest.approx(4.6) and s.p95_ms == pytest.approx(4.8) and s.p99_ms == pytest.approx(4.96)
    assert s.std_ms == pytest.approx(math.sqrt(2.5))  # sample standard deviation
    assert s.cv == pytest.approx(math.sqrt(2.5) / 3.0)
    assert s.throughput == pytest.approx(2 / 0.003)  # images per second


def test_latency_stats_edge_cases():
    one = latency_stats([0.01], batch=1)
    assert one.std_ms == 0.0 and one.cv == 0.0 and one.p99_ms == pytest.approx(10.0)
    with pytest.raises(RuntimeInputError, match="no latency samples"):
        latency_stats([], batch=1)


@pytest.mark.parametrize("text, expected", [
    ("20", Warmup(iterations=20)), (20, Warmup(iterations=20)), ("2s", Warmup(seconds=2.0)),
    ("500ms", Warmup(seconds=0.5)), ("0", Warmup()), ("1.5s", Warmup(seconds=1.5)),
])
def test_parse_warmup(text, expected):
    assert parse_warmup(text) == expected


@pytest.mark.parametrize("text", ["abc", "2.5", "-3", "2 min"])
def test_parse_warmup_refuses(text):
    with pytest.raises(RuntimeInputError, match="warm-up"):
        parse_warmup(text)


def test_warm_up_by_count_and_time():
    calls = []
    assert warm_up(lambda: calls.append(1), Warmup(iterations=7)) == 7
    assert warm_up(lambda: None, Warmup(seconds=0.02)) >= 1


def test_ort_profile_parsing(tmp_path):
    events = [
        {"cat": "Session", "name": "model_run", "dur": 900},
        {"cat": "Node", "name": "mm1_kernel_time", "dur": 300, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "mm2_kernel_time", "dur": 100, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "sm_kernel_time", "dur": 100, "args": {"op_name": "Softmax"}},
        {"cat": "Node", "name": "sm_fence_before", "dur": 5, "args": {"op_name": "Softmax"}},
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    totals = op_type_totals(path, runs=2)
    assert list(totals) == ["MatMul", "Softmax"]
    assert totals["MatMul"] == {"ms_per_run": pytest.approx(0.2), "calls_per_run": 1.0, "share": pytest.approx(0.8)}
    assert totals["Softmax"]["ms_per_run"] == pytest.approx(0.05)


def test_onnxruntime_profiling_gives_op_type_totals(onnx_path):
    rt = load(onnx_path, profiling=True)
    for _ in range(3):
        rt.infer(np.zeros((2, 3, 32, 32), np.float32))
    layers = rt.layer_profile()
    assert {"MatMul", "Softmax", "LayerNormalization"} <= set(layers)
    assert sum(v["share"] for v in layers.values()) == pytest.approx(1.0)
    maps = psvit.load_checkpoint("demo").config.num_attention_maps
    assert layers["Softmax"]["calls_per_run"] == pytest.approx(maps)  # one per distinct attention map
    assert rt.layer_profile() is layers  # profiling ended once; the totals are kept


def test_profile_runtime_phases(onnx_path):
    rt = load(onnx_path)
    stats = profile_runtime(rt, 3, warmup="2", iters=4)
    assert set(stats) == {"end_to_end", "compute", "preprocess"}
    assert all(s.batch == 3 for s in stats.values())
    assert stats["end_to_end"].iterations == 4 and stats["compute"].iterations == 4
    assert stats["end_to_end"].min_ms >= stats["compute"].min_ms * 0.5  # compute is a part of end-to-end
    with pytest.raises(RuntimeInputError):
        profile_runtime(rt, 0)


def test_bench_cli_compares_artifacts(onnx_path, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", str(onnx_path), "demo", "--batch", "1,3", "--iters", "3", "--warmup", "1",
                 "--json", str(out), "--plot", str(png)])
    assert code == 0
    report = json.loads(out.read_text())  # results are read from --json, never from the rendered tables
    ratios = {(r["backend"], r["batch"]): r for r in report["comparison"]}
    assert set(ratios) == {("onnxruntime", 1), ("onnxruntime", 3), ("torch", 1), ("torch", 3)}
    for batch in (1, 3):
        first, second = ratios[("onnxruntime", batch)], ratios[("torch", batch)]
        assert first["ratio"] == 1.0
        assert second["ratio"] == pytest.approx(second["median_ms"] / first["median_ms"])
    assert [r["backend"] for r in report["results"]] == ["onnxruntime", "torch"]
    first = report["results"][0]
    assert set(first["batches"]) == {"1", "3"}
    stats = first["batches"]["3"]["end_to_end"]
    assert stats["iterations"] == 3 and stats["throughput"] == pytest.approx(3000 / stats["mean_ms"])
    assert first["layers"] and report["results"][1]["layers"] is None
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "--batch"), (["--warmup", "soon"], "warm-up"), (["--iters", "0"], "--iters"),
    (["--backend", "torch"], "onnxruntime backend, not torch"),
])
def test_bench_cli_errors(onnx_path, capsys, args, message):
    assert main(["bench", str(onnx_path), *args]) == 2
    assert message in capsys.readouterr().err
