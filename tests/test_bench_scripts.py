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


@pytest.mark.parametrize("name", ["runtime_overhead", "gpu_latency", "search_micro"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        script(name).main(["--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_gpu_latency_dry_run(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    result = script("gpu_latency").main(["--dry-run", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "latency on CPU (dry run)" in printed and "0 Memcpy nodes" in printed
    data = json.loads(out.read_text())
    assert {(r["backend"], r["batch"]) for r in data["rows"]} == {("torch eager", 1), ("torch eager", 2),
                                                                   ("ort cpu", 1), ("ort cpu", 2)}
    assert data["ort_checks"]["psvit_micro.fp32.onnx"]["memcpy_nodes"] == 0
    assert result["dry_run"] is True


def test_runtime_overhead_runs(tmp_path, capsys):
    from psvit.export import export_onnx

    path = tmp_path / "demo.onnx"
    export_onnx("demo", path)
    out = tmp_path / "overhead.json"
    result = script("runtime_overhead").main(["--onnx", str(path), "--rounds", "2", "--iters", "5",
                                              "--json", str(out)])
    assert "overhead:" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["bare_ms"] > 0 and data["runtime_ms"] > 0 and len(data["round_medians_ms"]["runtime infer"]) == 2
    assert result["overhead_pct"] == pytest.approx(data["overhead_pct"])


def test_search_benchmark_kendall_tau():
    tau = script("search_micro").kendall_tau
    assert tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant pair
    assert tau([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(5 / 30**0.5)  # tau-b with a tie
