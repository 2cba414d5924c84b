"""``psvit-export demo``: the whole pipeline on the bundled model, end to end."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import psvit
from psvit.cli import main
from psvit.demo import SUMMARY, heldout_set, prepare_out
from psvit.errors import PSViTError

pytest.importorskip("onnxruntime", reason="the demo runs ONNX Runtime (pip install onnxruntime)")


def test_heldout_set_is_the_training_split():
    from psvit.data import split_indices
    from psvit.data.synthetic import label_of

    ckpt = psvit.load_checkpoint("demo")
    images, labels, facts = heldout_set(ckpt, limit=30)
    assert images.shape == (30, 3, 32, 32) and images.dtype == np.float32
    count = ckpt.metadata["data"]["count"]
    _, held = split_indices(np.array([label_of(i) for i in range(count)]), facts["val_fraction"], facts["seed"])
    assert labels.tolist() == [label_of(int(i)) for i in held[:30]]
    assert facts["images"] == 30 and facts["count"] == count


def test_prepare_out_refuses_unrelated_folders(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(PSViTError, match="not empty"):
        prepare_out(tmp_path)
    assert prepare_out(tmp_path, force=True) == tmp_path
    (tmp_path / "file").write_text("")
    with pytest.raises(PSViTError, match="is a file"):
        prepare_out(tmp_path / "file")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / SUMMARY).write_text("{}")
    assert prepare_out(earlier) == earlier  # its own earlier output is replaced


@pytest.mark.slow  # about 40 s on 2 cores: three exports, INT8 calibration, engine builds
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--batch", "1,4", "--iters", "3", "--warmup", "1"])
    assert code == 0
    summary = json.loads((out / SUMMARY).read_text())  # read from the JSON summary, never the tables
    assert summary["heldout"]["images"] == 1600 and summary["latency"]
    acc = {r["artifact"]: r for r in summary["accuracy"]}
    ckpt = psvit.load_checkpoint("demo")
    # the regenerated held-out set reproduces the accuracy the training run recorded
    assert acc["demo.safetensors"]["top1"] == pytest.approx(ckpt.metadata["training"]["heldout_top1"], abs=2e-3)
    assert acc["demo.fp32.onnx"]["agreement"] == 1.0 and acc["demo.fp32.onnx"]["rel_l2"] <= 1e-5
    assert acc["demo.fp16.onnx"]["agreement"] >= 0.995 and acc["demo.fp16.onnx"]["rel_l2"] <= 2e-3
    if importlib.util.find_spec("psvit.calibration") is not None:
        assert acc["demo.int8.onnx"]["agreement"] >= 0.99
    else:
        assert any(s["what"] == "INT8" for s in summary["skipped"])
    lat = {(r["artifact"], r["batch"]) for r in summary["latency"]}
    assert {("demo", 1), ("demo", 4), ("demo.fp32.onnx", 1), ("demo.fp16.onnx", 4)} <= lat
    engines = [a for a in summary["artifacts"] if a["name"].endswith(".engine")]
    if importlib.util.find_spec("tensorrt_rtx") or importlib.util.find_spec("tensorrt"):
        assert len(engines) == len([a for a in summary["artifacts"] if a["name"].endswith(".onnx")])
        assert any("run only on an NVIDIA GPU" in s["why"] for s in summary["skipped"])
    else:
        assert any(s["what"] == "TensorRT engines" for s in summary["skipped"])
    # a second run replaces its own output
    assert main(["demo", "--out", str(out), "--heldout", "20", "--batch", "1", "--iters", "1", "--warmup", "0",
                 "--no-engines"]) == 0
    assert json.loads((out / SUMMARY).read_text())["heldout"]["images"] == 20
