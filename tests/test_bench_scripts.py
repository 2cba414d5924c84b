"""The benchmark scripts: they import, --help works, and their CPU-safe parts run (tiny settings)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("onnxruntime", reason="the scripts time ONNX Runtime (pip install onnxruntime)")


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name", ["runtime_overhead", "gpu_latency", "triton_serving", "predict_throughput", "search_micro",
             "calibration_memory", "calibration_convergence"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        script(name).main(["--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_gpu_latency_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    result = script("gpu_latency").main(["--dry-run", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["gpu"] == "CPU (dry run)" and data["ort_checks"]
    assert all(c["memcpy_nodes"] == 0 for c in data["ort_checks"].values())
    assert {(r["backend"], r["batch"]) for r in data["rows"]} == {("torch eager", 1), ("torch eager", 2),
                                                                   ("ort cpu", 1), ("ort cpu", 2)}
    assert data["ort_checks"]["psvit_micro.fp32.onnx"]["memcpy_nodes"] == 0
    assert result["dry_run"] is True


def test_runtime_overhead_runs(tmp_path):
    from psvit.export import export_onnx

    path = tmp_path / "demo.onnx"
    export_onnx("demo", path)
    out = tmp_path / "overhead.json"
    result = script("runtime_overhead").main(["--onnx", str(path), "--rounds", "2", "--iters", "5",
                                              "--json", str(out)])
    data = json.loads(out.read_text())
    assert isinstance(data["overhead_us"], float) and result["overhead_us"] == pytest.approx(data["overhead_us"])
    assert data["bare_ms"] > 0 and data["runtime_ms"] > 0 and len(data["round_medians_ms"]["runtime infer"]) == 2
    assert result["overhead_pct"] == pytest.approx(data["overhead_pct"])


def test_predict_throughput_quick_run(tmp_path):
    out = tmp_path / "predict.json"
    result = script("predict_throughput").main(["--quick", "--images", "40", "--workers", "1", "--json", str(out)])
    data = json.loads(out.read_text())
    (demo,) = data["results"]
    assert any(r["mode"].startswith("pipelined, 1 loader worker ") for r in demo["rows"])
    assert demo["images"] == 40 and [r["x_one_thread"] for r in demo["rows"]][1] == pytest.approx(1.0)
    assert all(r["images_per_s"] > 0 and r["stats"] is not None for r in demo["rows"])
    assert len(data["load_average"]["before"]) == 3 and result["settings"]["quick"] is True


def test_onnx_cpu_help_and_helpers(capsys):
    onnx_cpu = script("onnx_cpu")
    with pytest.raises(SystemExit) as exc:
        onnx_cpu.main(["--help"])
    assert exc.value.code == 0 and "--profile-runs" in capsys.readouterr().out
    assert onnx_cpu.cpu_slug("Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz") == "intel-xeon-platinum-8480"
    assert onnx_cpu.cpu_slug("AMD EPYC") == "amd-epyc"
    rows = onnx_cpu.side_by_side({
        "timm": {"MatMul": {"ms_per_run": 9.0, "calls_per_run": 6}, "Erf": {"ms_per_run": 2.0, "calls_per_run": 2}},
        "ours": {"MatMul": {"ms_per_run": 8.0, "calls_per_run": 6}, "BiasGelu": {"ms_per_run": 1.0, "calls_per_run": 2}},
    })
    assert [r["op"] for r in rows] == ["total", "MatMul", "Erf", "BiasGelu"]
    assert rows[0]["timm"] == {"ms_per_run": 11.0, "calls_per_run": 8} and rows[0]["ours"]["ms_per_run"] == 9.0
    assert rows[2]["ours"] is None and rows[3]["timm"] is None
    with pytest.raises(SystemExit) as exc:  # refused before any export
        onnx_cpu.main(["--also", "before=/no/such.onnx"])
    assert exc.value.code == 2 and "expected LABEL=PATH of an existing ONNX file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        onnx_cpu.main(["--repeat", "0"])
    assert exc.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_onnx_cpu_repeats_pair_rows_within_each_repeat():
    """A ratio is taken inside each repeat (rows timed in the same rounds), then the median over repeats."""
    onnx_cpu = script("onnx_cpu")

    def row(ms: float) -> dict[str, float]:
        return {"median_ms": ms, "mean_ms": ms + 1, "p90_ms": ms + 2, "min_ms": ms - 1, "runs": 4}

    ours, timm = ("deit_small", onnx_cpu.OURS, 8), ("deit_small", onnx_cpu.TIMM, 8)
    # The machine slows down in repeat 2: both rows slower, the ratio within it still 0.9.
    repeats = [{ours: row(80.0), timm: row(100.0)}, {ours: row(180.0), timm: row(200.0)},
               {ours: row(90.0), timm: row(100.0)}]
    ratios = [onnx_cpu.latency_ratios(t, "deit_small", "", [], [8]) for t in repeats]
    assert [r["deit_small ours/timm b8"] for r in ratios] == pytest.approx([0.8, 0.9, 0.9])
    combined = onnx_cpu.combine_repeats(repeats)
    assert combined[ours]["median_ms"] == 90.0 and combined[ours]["median_ms_repeats"] == [80.0, 180.0, 90.0]
    assert combined[ours]["min_ms"] == 79.0 and combined[ours]["runs"] == 12 and combined[timm]["p90_ms"] == 102.0


def test_search_benchmark_kendall_tau():
    tau = script("search_micro").kendall_tau
    assert tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant pair
    assert tau([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(5 / 30**0.5)  # tau-b with a tie


def test_calibration_memory_runs(demo_fp32_onnx, tmp_path):
    """Two counts, one method, each calibration in its own process; the reference at the larger count."""
    out = tmp_path / "mem.json"
    result = script("calibration_memory").main(["--model", str(demo_fp32_onnx), "--counts", "2,4", "--methods", "mse",
                                                "--batch", "2", "--reference-count", "4", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["settings"]["counts"] == "2,4" and data["settings"]["batch"] == 2
    assert [(r["method"], r["count"], r["images"]) for r in data["rows"]] == [("mse", 2, 2), ("mse", 4, 4)]
    assert all(r["peak_rss_bytes"] >= r["peak_rss_bytes_self"] > 0 for r in data["rows"])
    (ref,) = data["reference"]
    assert ref["method"] == "mse" and ref["count"] == 4 and ref["max_rel_diff"] < 1e-3
    assert result["summary"]["mse"]["peak_ratio_last_first"] > 0
