"""``psvit-export trt`` through the real entry point: a checkpoint source end to end, reuse and --force,
and bad inputs (exit 2, one clear message, no traceback, no engine or sidecar left behind)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from psvit.cli import main

RTX = "TensorRT-RTX builds engines on CPU: pip install tensorrt-rtx"


def flat(text: str) -> str:
    """Rich wraps long messages at the console width; compare with whitespace collapsed."""
    return " ".join(text.split())


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["trt", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.trt
def test_demo_checkpoint_to_engine_reuse_and_force(tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx", reason=RTX)
    out = tmp_path / "demo.fp16.engine"
    args = ["demo", "--out", str(out), "--fp16", "--batch", "1:2:8", "--optimization-level", "0", "--workspace", "512M",
            "--builder", "tensorrt-rtx"]
    rc, stdout, stderr = run(capsys, *args)
    assert rc == 0, stderr
    assert "built" in stdout and "FP16" in stdout and "build time" in stdout and "Traceback" not in stderr
    sidecar = json.loads((tmp_path / "demo.fp16.engine.json").read_text())
    assert sidecar["precision"] == "fp16" and sidecar["batch"] == [1, 2, 8]
    assert sidecar["command"].startswith("psvit-export trt demo --out")
    assert (tmp_path / "demo.fp16.onnx").is_file()  # the intermediate ONNX the sidecar hashes
    rc, stdout, stderr = run(capsys, *args)
    assert rc == 0 and "reusing" in flat(stderr) and "reused" in stdout
    rc, stdout, stderr = run(capsys, *args, "--force")
    assert rc == 0 and "built" in stdout and "reusing" not in stderr


@pytest.mark.parametrize("argv, message, needs_builder", [
    (["no_such_model"], "not an existing checkpoint file or 'demo'", True),
    (["missing.onnx"], "does not exist", True),
    (["fake.onnx"], "is not a readable ONNX file", True),
    (["NOT_ONNX"], "unknown checkpoint format", True),
    (["demo", "--int8", "--builder", "tensorrt-rtx"], "--int8 needs calibration images", True),
    (["demo", "--fp16", "--int8"], "--fp16 and --int8 exclude each other", False),
    (["demo", "--batch", "8:1:32"], "MIN <= OPT <= MAX", False),
    (["demo", "--batch", "x"], "not a whole number", False),
    (["demo", "--workspace", "lots"], "--workspace 'lots' is not a size", False),
    (["demo", "--optimization-level", "7"], "--optimization-level must be 0..5", False),
    (["demo", "--builder", "tensorrt-llm"], "'tensorrt-llm' is not one of 'auto', 'tensorrt', 'tensorrt-rtx'", False),
    (["demo", "--calib-data", "no/such/dir"], "--calib-data no/such/dir does not exist", False),
])
def test_bad_inputs(tmp_path, capsys, monkeypatch, argv, message, needs_builder):
    if needs_builder and importlib.util.find_spec("tensorrt_rtx") is None:
        pytest.skip(f"checked after the builder is imported; {RTX}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "NOT_ONNX").write_text("hello")
    (tmp_path / "fake.onnx").write_text("hello")
    out = tmp_path / "out" / "m.engine"
    out.parent.mkdir()
    builder = [] if "--builder" in argv else ["--builder", "tensorrt-rtx"]
    rc, _, stderr = run(capsys, *argv, *builder, "--out", str(out))
    assert rc == 2, stderr
    assert message in flat(stderr) and "Traceback" not in stderr
    assert list(out.parent.iterdir()) == []


def test_unwritable_output_and_missing_builder(tmp_path, capsys):
    rc, _, stderr = run(capsys, "demo", "--out", str(tmp_path / "no" / "m.engine"))
    assert rc == 2 and "does not exist; create it first" in flat(stderr)
    rc, _, stderr = run(capsys, "demo", "--out", str(tmp_path))
    assert rc == 2 and "is a folder" in flat(stderr)
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here; the missing-builder message cannot be shown")
    rc, _, stderr = run(capsys, "demo", "--out", str(tmp_path / "m.engine"), "--builder", "tensorrt")
    assert rc == 2 and "Traceback" not in stderr
    assert "pip install tensorrt (data-centre GPUs)" in flat(stderr)
    assert list(tmp_path.iterdir()) == []
