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


def assert_rebuilds_as_recorded(sidecar: dict, cwd) -> None:
    """The sidecar's rebuild command parses with the real CLI and asks for the engine's whole reuse key."""
    import shlex

    import typer

    import psvit.cli

    argv = shlex.split(sidecar["command"])
    assert argv[:2] == ["psvit-export", "trt"]
    trt = typer.main.get_command(psvit.cli.app).commands["trt"]
    params = trt.make_context("trt", argv[2:]).params
    key = sidecar["build_options"]
    assert params["force"] is True and params["builder"].value.replace("-", "_") == sidecar["flavour"]
    assert params["optimization_level"] == key["optimization_level"]
    from psvit.export.tensorrt import parse_batch_profile, parse_size

    assert parse_size(params["workspace"]) == key["workspace_bytes"]
    assert list(parse_batch_profile(params["batch"]) or []) == (sidecar["batch"] or [])
    precision_flags = {p for p in ("fp16", "int8") if params[p]}
    assert precision_flags == ({sidecar["precision"]} if sidecar["precision"] != "fp32" else set())


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["trt", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.trt
def test_demo_checkpoint_to_engine_reuse_and_force(tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx", reason=RTX)
    out = tmp_path / "demo.fp16.engine"
    report = tmp_path / "trt.json"
    args = ["demo", "--out", str(out), "--fp16", "--batch", "1:2:8", "--optimization-level", "0", "--workspace", "512M",
            "--builder", "tensorrt-rtx", "--json", str(report)]
    rc, stdout, stderr = run(capsys, *args)
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    result = json.loads(report.read_text())
    assert result["reused"] is False and result["sidecar"]["precision"] == "fp16"
    sidecar = json.loads((tmp_path / "demo.fp16.engine.json").read_text())
    assert sidecar["precision"] == "fp16" and sidecar["batch"] == [1, 2, 8]
    assert sidecar["build_options"]["workspace_bytes"] == 512 << 20
    assert (tmp_path / "demo.fp16.onnx").is_file()  # the intermediate ONNX the sidecar hashes
    assert_rebuilds_as_recorded(sidecar, tmp_path)
    rc, stdout, stderr = run(capsys, *args)
    assert rc == 0 and json.loads(report.read_text())["reused"] is True
    rc, stdout, stderr = run(capsys, *args, "--force")
    assert rc == 0 and json.loads(report.read_text())["reused"] is False


@pytest.mark.trt
@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--int8", "--calib-data", "synthetic", "--calib-count", "17", "--calib-batch", "5", "--calib-method", "max"],
    ["--fp16", "--calib-data", "synthetic"],  # FP16 re-exported from the FP32 ONNX's checkpoint
], ids=["int8-calibrated", "fp16-with-calib-data"])
def test_onnx_source_builds_and_records_a_command_that_parses(demo_fp32_onnx, tmp_path, capsys, monkeypatch, flags):
    pytest.importorskip("tensorrt_rtx", reason=RTX)
    monkeypatch.chdir(tmp_path)
    rc, _, stderr = run(capsys, str(demo_fp32_onnx), "--out", "m.engine", *flags, "--optimization-level", "0",
                        "--builder", "tensorrt-rtx", "--json", "trt.json")
    assert rc == 0, stderr
    sidecar = json.loads((tmp_path / "m.engine.json").read_text())
    assert sidecar["precision"] == flags[0][2:]
    assert_rebuilds_as_recorded(sidecar, tmp_path)
    if "--int8" in flags:
        import shlex

        import typer

        import psvit.cli

        argv = shlex.split(sidecar["command"])
        params = typer.main.get_command(psvit.cli.app).commands["trt"].make_context("trt", argv[2:]).params
        assert (params["calib_data"], params["calib_count"], params["calib_batch"]) == ("synthetic", 17, 5)
        assert sidecar["calibration"]["method"] == "max"


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
