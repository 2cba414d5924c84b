"""Checkpoints: safetensors round trip with metadata, safe .pth loading, clear errors, warm start."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import psvit
from psvit import CheckpointError, ConfigError
from psvit.checkpoint import read_checkpoint_metadata


@pytest.fixture
def micro():
    torch.manual_seed(0)
    return psvit.create_model("psvit_micro", num_classes=3).eval()


def _same_function(a, b, img_size=32, tol=1e-5):
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=tol, atol=tol)


def test_safetensors_round_trip_rebuilds_the_model_alone(micro, tmp_path):
    path = psvit.save_checkpoint(micro, tmp_path / "m.safetensors", class_names=["a", "b", "c"],
                                 metadata={"top1": 0.8})
    ck = psvit.load_checkpoint(path)
    assert ck.config == micro.cfg and ck.variant == "psvit_micro"
    assert ck.class_names == ["a", "b", "c"] and ck.metadata == {"top1": 0.8}
    assert ck.preprocess["mean"] == list(micro.cfg.mean) and ck.preprocess["img_size"] == 32
    assert len(ck.sha256) == 64 and not ck.model.training
    _same_function(ck.model, micro)
    meta = read_checkpoint_metadata(path)
    assert meta["format"] == "psvit-checkpoint/1" and "torch" in meta["psvit.versions"]


def test_build_options_apply_when_loading(micro, tmp_path):
    path = psvit.save_checkpoint(micro, tmp_path / "m.safetensors")
    ck = psvit.load_checkpoint(path, exportable=True, shared_attention="qk")
    assert ck.model.exportable and ck.model.shared_attention == ("qk",) * 3
    _same_function(ck.model, micro)


def test_pth_state_dict_needs_a_variant(micro, tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"state_dict": micro.state_dict()}, path)
    with pytest.raises(CheckpointError, match="carries no PSViT config.*variant=NAME"):
        psvit.load_checkpoint(path)
    ck = psvit.load_checkpoint(path, variant="psvit_micro", num_classes=3)
    _same_function(ck.model, micro)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": psvit.create_model("psvit_micro")}, path)  # a pickled module, not a state dict
    with pytest.raises(CheckpointError, match="weights_only=True"):
        psvit.load_checkpoint(path, variant="psvit_micro")


def test_mismatches_are_listed(micro, tmp_path):
    path = tmp_path / "m.pth"
    torch.save(micro.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        psvit.load_checkpoint(path, variant="psvit_micro")  # 10 classes vs 3 in the file
    assert "head.weight: checkpoint (3, 128) vs model (10, 128)" in str(err.value)
    with pytest.raises(CheckpointError) as err:
        psvit.load_checkpoint(path, variant="psvit_micro", num_classes=3, share=(3,))
    msg = str(err.value)
    assert "missing keys (2): blocks.5.attn.qkv.bias, blocks.5.attn.qkv.weight" in msg
    assert "unexpected keys (2): blocks.5.attn.v.bias, blocks.5.attn.v.weight" in msg


def test_variant_that_contradicts_the_file_is_refused(micro, tmp_path):
    path = psvit.save_checkpoint(micro, tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="drop --variant"):
        psvit.load_checkpoint(path, variant="psvit_2d_tiny")


def test_foreign_safetensors_without_config(micro, tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in micro.state_dict().items()}, str(path))
    ck = psvit.load_checkpoint(path, variant="psvit_micro", num_classes=3)
    _same_function(ck.model, micro)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.safetensors", None, "does not exist"),
        ("broken.safetensors", b"\x00\x01garbage", "not a readable safetensors"),
        ("truncated.pth", b"PK\x03\x04", "could not be loaded"),
        ("weights.npz", b"", "unknown checkpoint format"),
    ],
)
def test_unreadable_files_get_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        psvit.load_checkpoint(path, variant="psvit_micro")


def test_save_is_atomic_and_validates(micro, tmp_path):
    with pytest.raises(ConfigError, match="2 class names given for a model with 3 classes"):
        psvit.save_checkpoint(micro, tmp_path / "m.safetensors", class_names=["a", "b"])
    with pytest.raises(psvit.PSViTError, match="does not exist"):
        psvit.save_checkpoint(micro, tmp_path / "nope" / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_distilled_checkpoints_are_refused(micro):
    state = dict(micro.state_dict(), dist_token=torch.zeros(1, 1, 64))
    with pytest.raises(CheckpointError, match="distillation token"):
        psvit.warm_start(psvit.create_model("psvit_micro"), state)


def test_warm_start_reports_what_arrived():
    deit = psvit.create_model("deit_tiny", img_size=32, patch_size=4, num_classes=10)
    target = psvit.create_model("psvit_micro", dims=(192, 192, 192), heads=(3, 3, 3))
    report = psvit.warm_start(target, deit.state_dict())
    assert "blocks.0.attn.qkv.weight" in report.loaded and "pos_embed" in report.loaded
    assert "blocks.3.attn.qkv.weight" in report.not_in_model  # a sharing block has no qkv
    assert any(k.startswith("pools.0") for k in report.not_in_checkpoint)
    torch.testing.assert_close(target.blocks[1].mlp.fc2.weight, deit.blocks[1].mlp.fc2.weight)


def test_metadata_survives_as_json(micro, tmp_path):
    path = psvit.save_checkpoint(micro, tmp_path / "m.safetensors", metadata={"cmd": "x", "n": [1, 2]})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    assert json.loads(raw["psvit.config"])["share"] == [3, 5]
    assert json.loads(raw["psvit.extra"]) == {"cmd": "x", "n": [1, 2]}


def test_written_files_get_the_usual_permissions(micro, tmp_path):
    old = os.umask(0o022)
    try:
        path = psvit.save_checkpoint(micro, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
