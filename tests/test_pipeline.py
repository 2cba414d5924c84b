"""psvit.pipeline: reuse decided by content hash in one place, FP16 always through the checked export path,
and what each target gets (the non-quantized rest of INT8 graphs: FP32 for ONNX Runtime CPU, FP16 for
TensorRT). Engine reuse is exercised with the real TensorRT-RTX builder in test_engine_build.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import psvit
from psvit import pipeline
from psvit.errors import ArtifactError
from psvit.pipeline import Calibration, Target, derived_onnx_path, reusable_export

pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime: pip install onnxruntime")


def test_target_picks_the_int8_rest():
    assert {t.value: t.int8_rest for t in Target} == {"tensorrt": "fp16", "ort-cpu": "fp32", "ort-cuda": "fp16"}


def test_derived_paths(tmp_path):
    assert derived_onnx_path(tmp_path / "m.fp16.engine", "fp16") == tmp_path / "m.fp16.onnx"
    assert derived_onnx_path(tmp_path / "m.plan", "int8") == tmp_path / "m.int8.onnx"
    src = tmp_path / "m.fp32.onnx"
    assert derived_onnx_path(tmp_path / "m.engine", "fp32", avoid=src) == tmp_path / "m.fp32.build.onnx"


def test_export_reuse_is_by_content_hash(tmp_path, demo_fp32_onnx):
    out = tmp_path / "m.fp32.onnx"
    shutil.copy(demo_fp32_onnx, out)
    copy = tmp_path / "same_weights.safetensors"  # another name, the same bytes: the same checkpoint
    shutil.copy(psvit.checkpoint.demo_checkpoint_path(), copy)
    assert reusable_export(out, "demo", "fp32") and reusable_export(out, str(copy), "fp32")
    assert not reusable_export(out, "demo", "fp16")  # another precision
    other = tmp_path / "other.safetensors"
    model = psvit.load_checkpoint("demo").model
    psvit.save_checkpoint(model, other, metadata={"note": "re-saved"})  # same weights, other bytes
    assert not reusable_export(out, str(other), "fp32")
    assert not reusable_export(out, "psvit_micro", "fp32")  # random weights are never assumed equal
    step = pipeline.onnx_for("demo", "fp32", out)
    assert step.reused and step.export is None and "reused" in step.steps[0]


def test_export_made_with_other_options_is_replaced_and_says_why(tmp_path, demo_fp32_onnx):
    """A user's own export at the derived path (qk sharing, fixed batch, FP16 I/O) is not taken for the
    pipeline's: it is replaced, and the log names what differed."""
    import json

    from psvit.export.metadata import read_metadata, update_metadata_file

    out = tmp_path / "m.fp32.onnx"
    shutil.copy(demo_fp32_onnx, out)
    sharing = read_metadata(out)["psvit.shared_attention"] | {"requested": "qk"}
    update_metadata_file(out, {"psvit.shared_attention": json.dumps(sharing), "psvit.batch": "4",
                               "psvit.io_precision": "fp16"})
    sha, differs = pipeline.export_differences(out, "demo", "fp32")
    assert sha is None and differs == ["batch 4 (dynamic wanted)", "shared attention qk (map wanted)",
                                       "input/output precision fp16 (fp32 wanted)"]
    said: list[str] = []
    step = pipeline.onnx_for("demo", "fp32", out, log=said.append)
    assert not step.reused and step.export is not None
    assert said[0] == f"replacing {out}: " + ", ".join(differs)
    meta = read_metadata(out)
    assert meta["psvit.batch"] == "dynamic" and meta["psvit.shared_attention"]["requested"] == "map"
    assert pipeline.export_differences(out, "demo", "fp32") == (meta["psvit.source_sha256"], [])


def test_fp16_of_an_onnx_is_exported_from_its_checkpoint(tmp_path, demo_fp32_onnx):
    from psvit.export.metadata import read_metadata, update_metadata_file

    fp32 = tmp_path / "m.onnx"
    shutil.copy(demo_fp32_onnx, fp32)
    step = pipeline.onnx_for(fp32, "fp16", tmp_path / "m.fp16.onnx")
    meta = read_metadata(step.path)
    assert step.export is not None and step.export.graph.ok  # graph checks ran
    assert step.export.verification[-1].passed and step.export.verification[-1].reference.startswith("checkpoint")
    assert meta["psvit.precision"] == "fp16" and meta["psvit.source_sha256"] == read_metadata(fp32)[
        "psvit.source_sha256"]
    update_metadata_file(fp32, {"psvit.source": "checkpoint /nowhere/model.safetensors"})
    with pytest.raises(ArtifactError, match="records 'checkpoint /nowhere/model.safetensors'.*Pass the checkpoint"):
        pipeline.onnx_for(fp32, "fp16", tmp_path / "x.fp16.onnx")
    assert pipeline.onnx_for(fp32, "fp32", tmp_path / "y.onnx").path == fp32  # already what is asked: as it is


def test_int8_rest_follows_the_target_and_the_cache_is_reused(tmp_path, demo_fp32_onnx):
    calib = Calibration("synthetic", count=16, cache=tmp_path / "ranges.calib.json")
    cpu = pipeline.onnx_for(demo_fp32_onnx, "int8", tmp_path / "m.int8.onnx", target=Target.ORT_CPU,
                            calibration=calib)
    trt = pipeline.onnx_for(demo_fp32_onnx, "int8", tmp_path / "m.int8.trt.onnx", target="tensorrt",
                            calibration=calib)
    assert cpu.quantize.precision_rest == "fp32" and trt.quantize.precision_rest == "fp16"
    assert not cpu.calibration["cache_reused"] and trt.calibration["cache_reused"]  # same FP32 sha, data, method
    assert cpu.calibration["cache_sha256"] == trt.calibration["cache_sha256"]
    from psvit.export.errors import EngineBuildError

    with pytest.raises(EngineBuildError, match="--int8 needs calibration images"):
        pipeline.onnx_for(demo_fp32_onnx, "int8", tmp_path / "n.int8.onnx")
    assert not (tmp_path / "n.int8.onnx").exists()


def test_engines_are_refused_as_sources(tmp_path):
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"vtrt" + bytes(8))
    with pytest.raises(ArtifactError, match="is a TensorRT engine"):
        pipeline.onnx_for(plan, "fp32", tmp_path / "m.onnx")
    assert not Path(tmp_path / "m.onnx").exists()
