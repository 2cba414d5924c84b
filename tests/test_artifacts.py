"""The one artifact-kind detector: content decides where the file exists, the name otherwise; folders and
unknown files are refused naming what is accepted; every command and the API use it."""
from __future__ import annotations

import shutil
import struct

import pytest

import psvit
from psvit.artifacts import ArtifactKind, detect_artifact
from psvit.errors import ArtifactError, UnknownVariantError


def test_content_decides_over_the_name(tmp_path, demo_fp32_onnx):
    renamed = tmp_path / "model.ckpt"  # an ONNX file with a checkpoint's suffix
    shutil.copy(demo_fp32_onnx, renamed)
    art = detect_artifact(renamed)
    assert (art.kind, art.format, art.decided_by) == (ArtifactKind.ONNX, "onnx", "content")
    ckpt = tmp_path / "weights.onnx"  # a safetensors checkpoint with an ONNX suffix
    shutil.copy(psvit.checkpoint.demo_checkpoint_path(), ckpt)
    assert detect_artifact(ckpt).kind is ArtifactKind.CHECKPOINT and detect_artifact(ckpt).format == "safetensors"
    plan = tmp_path / "engine.bin"
    plan.write_bytes(b"vtrt" + bytes(100))
    assert detect_artifact(plan).kind is ArtifactKind.ENGINE and detect_artifact(plan).backend == "tensorrt"
    assert detect_artifact(demo_fp32_onnx.read_bytes()).kind is ArtifactKind.ONNX  # serialized bytes too


def test_torch_checkpoints_by_content(tmp_path):
    torch = pytest.importorskip("torch")
    zipped, legacy = tmp_path / "a.ckpt", tmp_path / "b.pt"
    torch.save({"w": torch.zeros(2)}, zipped)
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert detect_artifact(zipped).format == "torch-zip" and detect_artifact(legacy).format == "torch-pickle"
    assert {detect_artifact(p).kind for p in (zipped, legacy)} == {ArtifactKind.CHECKPOINT}


def test_names_where_nothing_exists(tmp_path):
    assert detect_artifact("demo").kind is ArtifactKind.CHECKPOINT
    assert detect_artifact("psvit_micro").kind is ArtifactKind.VARIANT
    assert detect_artifact(tmp_path / "later.onnx").kind is ArtifactKind.ONNX  # its loader says it is missing
    assert detect_artifact(tmp_path / "later.plan").kind is ArtifactKind.ENGINE
    assert detect_artifact(tmp_path / "later.ckpt").kind is ArtifactKind.CHECKPOINT
    with pytest.raises(UnknownVariantError, match="Did you mean psvit_micro"):
        detect_artifact("psvit_mikro")
    with pytest.raises(ArtifactError, match="cannot tell what"):
        detect_artifact(tmp_path / "weights.xyz")


def test_folders_and_unknown_files_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match="is a folder; expected an .onnx file, a TensorRT engine"):
        detect_artifact(tmp_path)
    (tmp_path / "notes").write_text("hello")
    with pytest.raises(ArtifactError, match="cannot tell what .* unknown checkpoint format"):
        detect_artifact(tmp_path / "notes")
    (tmp_path / "bad.onnx").write_text("hello")
    with pytest.raises(ArtifactError, match="is not a readable ONNX file"):
        detect_artifact(tmp_path / "bad.onnx")
    (tmp_path / "bad.ckpt").write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError, match="not a readable checkpoint"):
        detect_artifact(tmp_path / "bad.ckpt")
    header = struct.pack("<Q", 10**9) + b"{"  # a safetensors-like header longer than the file
    (tmp_path / "cut.safetensors").write_bytes(header)
    with pytest.raises(ArtifactError, match="not a readable checkpoint"):
        detect_artifact(tmp_path / "cut.safetensors")


def test_truncated_onnx_is_still_onnx(tmp_path, demo_fp32_onnx):
    cut = tmp_path / "cut.bin"
    cut.write_bytes(demo_fp32_onnx.read_bytes()[:3000])  # the graph field runs past the end
    assert detect_artifact(cut).kind is ArtifactKind.ONNX


def test_an_engine_is_recognised_by_its_sidecar(tmp_path):
    odd = tmp_path / "model.weird"
    odd.write_bytes(b"\x01\x02unknown header")
    (tmp_path / "model.weird.json").write_text("{}")
    assert detect_artifact(odd).kind is ArtifactKind.ENGINE


def test_calibrate_reads_a_ckpt_as_a_checkpoint(tmp_path, capsys):
    """The bug the detector fixes: a .ckpt passed to `calibrate` used to be parsed as ONNX."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime.quantization", reason="calibration needs onnxruntime")
    from psvit.calibration import quantize_onnx
    from psvit.calibration.errors import CalibrationError
    from psvit.cli import main

    ckpt = tmp_path / "model.ckpt"
    torch.save(psvit.load_checkpoint("demo").model.state_dict(), ckpt)
    with pytest.raises(CalibrationError, match="is a checkpoint .*torch-zip.*not an ONNX graph"):
        quantize_onnx(ckpt, tmp_path / "q.onnx", calib_data="synthetic")
    # through the CLI the pipeline exports it first; a bare state dict needs its variant
    assert main(["calibrate", str(ckpt), "--calib-data", "synthetic", "--out", str(tmp_path / "q.onnx")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error: model.ckpt carries no PSViT config" in err and "not a readable ONNX" not in err
    assert not (tmp_path / "q.onnx").exists()
    assert main(["calibrate", str(ckpt), "--variant", "psvit_micro", "--calib-data", "synthetic", "--calib-count",
                 "16", "--out", str(tmp_path / "q.onnx")]) == 0
    assert detect_artifact(tmp_path / "q.fp32.onnx").kind is ArtifactKind.ONNX  # exported next to the INT8 graph
    assert detect_artifact(tmp_path / "q.onnx").kind is ArtifactKind.ONNX
