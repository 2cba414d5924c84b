"""psvit.train and `psvit-export train`; the bundled demo model against its recorded accuracy."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import psvit
from psvit.cli import main
from psvit.data import split_indices
from psvit.data.image_folder import load_image_folder
from psvit.data.synthetic import CLASSES, SyntheticSplit, generate_synthetic, load_synthetic
from psvit.errors import ConfigError, DataError
from psvit.preprocessing import Preprocess
from psvit.train import TrainRecipe, augment, build_model, evaluate, lr_at, train

PRE = Preprocess.from_config(psvit.get_config("psvit_micro"))
# A narrower micro model keeps the unit runs to a second or two; the config travels in the checkpoint.
SMALL = {"dims": (32, 48, 64), "heads": (2, 3, 4)}


def test_lr_schedule_warms_up_then_decays_to_min():
    lrs = [lr_at(s, 100, 10, 1e-3, 1e-5) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(5, 10, 0, 1.0, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 9)))


@pytest.mark.parametrize(
    "kw, match",
    [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "learning rate"), ({"batch_size": 0}, "batch size"),
     ({"min_lr": 1.0}, "min_lr"), ({"label_smoothing": 1.0}, "label smoothing"), ({"threads": 0}, "threads")],
)
def test_recipe_rejects_bad_values(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainRecipe(**{"epochs": 1, **kw})


def test_augment_keeps_shape_and_follows_the_generator():
    x = torch.randn(6, 3, 8, 8)
    a = augment(x, 2, True, torch.Generator().manual_seed(0))
    b = augment(x, 2, True, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(augment(x, 0, False, torch.Generator()), x)


def test_training_beats_chance_and_checkpoint_reloads(colour_folder, tmp_path):
    data = load_image_folder(colour_folder, PRE)
    train_idx, held_idx = split_indices(data.labels, 0.25, seed=0)
    model = build_model("psvit_micro", data.num_classes, seed=0, **SMALL)
    recipe = TrainRecipe(epochs=4, batch_size=16, lr=2e-3, seed=0, threads=1)
    result = train(model, data.subset(train_idx), data.subset(held_idx), PRE, recipe, progress=False)
    assert result.final_top1 >= 0.8  # chance is 1/3
    assert len(result.history) == 4 and result.best_top1 >= result.final_top1
    assert result.train_images == 45 and result.heldout_images == 15

    path = psvit.save_checkpoint(model, tmp_path / "colours.safetensors", class_names=list(data.class_names),
                                 metadata={"heldout_top1": result.final_top1})
    ckpt = psvit.load_checkpoint(path)
    assert ckpt.class_names == ["blue", "green", "red"] and ckpt.variant == "psvit_micro"
    assert evaluate(ckpt.model, data.subset(held_idx), PRE) == pytest.approx(result.final_top1)


def test_same_seed_gives_identical_weights():
    data = load_synthetic(20, seed=0, preprocess=PRE)
    states = []
    for _ in range(2):
        model = build_model("psvit_micro", 10, seed=3, **SMALL)
        train(model, data, data, PRE, TrainRecipe(epochs=1, batch_size=8, seed=3, threads=1), progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_class_count_mismatch_is_a_clear_error():
    data = load_synthetic(20, seed=0, preprocess=PRE)
    model = build_model("psvit_micro", 4, seed=0, **SMALL)
    with pytest.raises(ConfigError, match="num_classes=10"):
        train(model, data, data, PRE, TrainRecipe(epochs=1), progress=False)


# ---- CLI ---------------------------------------------------------------------------------------------
def test_cli_train_on_a_folder_writes_a_documented_checkpoint(colour_folder, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    code = main(["train", "--variant", "psvit_micro", "--data", str(colour_folder), "--epochs", "1",
                 "--out", str(out), "--batch-size", "16", "--threads", "1", "--val-fraction", "0.25"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    ckpt = psvit.load_checkpoint(out)
    assert ckpt.class_names == ["blue", "green", "red"] and ckpt.config.num_classes == 3
    training, data = ckpt.metadata["training"], ckpt.metadata["data"]
    assert training["command"].startswith("psvit-export train --variant psvit_micro --data ")
    assert "--no-flip" in training["command"] and "--threads 1" in training["command"]
    assert training["recipe"]["seed"] == 0 and training["heldout_images"] == 15
    assert 0.0 <= training["heldout_top1"] <= 1.0
    assert data["kind"] == "image_folder" and len(data["fingerprint"]) == 64 and data["skipped_files"] == 0


def test_cli_train_on_every_image_reports_no_heldout_accuracy(colour_folder, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    code = main(["train", "--variant", "psvit_micro", "--data", str(colour_folder), "--epochs", "1",
                 "--out", str(out), "--batch-size", "32", "--threads", "1", "--val-fraction", "0"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "60 images, 3 classes: blue 20, green 20, red 20" in err
    assert "none held out (--val-fraction 0): no held-out accuracy will be measured" in err
    training = psvit.load_checkpoint(out).metadata["training"]
    assert training["train_images"] == 60 and training["heldout_images"] == 0
    assert training["heldout_top1"] is None and training["best_heldout_top1"] is None  # not a made-up 0%
    assert all(h["heldout_top1"] is None for h in training["history"])
    assert "--val-fraction 0 " in training["command"]
    with pytest.raises(DataError, match="no images to evaluate"):
        evaluate(psvit.load_checkpoint(out).model, load_image_folder(colour_folder, PRE).subset([]), PRE)


def test_cli_train_on_synthetic_data(tmp_path, capsys):
    out = tmp_path / "syn.safetensors"
    code = main(["train", "--variant", "psvit_micro", "--data", "synthetic", "--synthetic-count", "40",
                 "--epochs", "1", "--batch-size", "32", "--seed", "1", "--threads", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    ckpt = psvit.load_checkpoint(out)
    assert ckpt.class_names == list(CLASSES)
    assert ckpt.metadata["data"]["seed"] == 1 and ckpt.metadata["data"]["count"] == 40
    assert "--data synthetic --synthetic-count 40" in ckpt.metadata["training"]["command"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variant", "psvit_mikro", "--data", "synthetic"], "Did you mean psvit_micro"),
        (["--variant", "psvit_micro", "--data", "/no/such/folder"], "does not exist"),
        (["--variant", "psvit_micro", "--data", "{folder}", "--synthetic-count", "50"],
         "only applies to --data synthetic"),
        (["--variant", "psvit_micro", "--data", "synthetic", "--val-fraction", "1.5"], "between 0 and 1"),
        (["--variant", "psvit_micro", "--data", "synthetic", "--lr", "0"], "learning rate"),
    ],
)
def test_cli_train_bad_inputs_exit_2(args, message, colour_folder, tmp_path, capsys):
    args = [a.replace("{folder}", str(colour_folder)) for a in args]
    out = tmp_path / "m.safetensors"
    assert main(["train", *args, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_cli_train_checks_the_output_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "psvit.cli", "train", "--variant", "psvit_micro", "--data", "synthetic",
         "--epochs", "1", "--out", str(tmp_path / "model.pth")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert ".safetensors" in proc.stderr and "Traceback" not in proc.stderr


# ---- the bundled demo model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo() -> psvit.Checkpoint:
    return psvit.load_checkpoint("demo")


def test_demo_loads_with_class_names_and_provenance(demo):
    assert demo.variant == "psvit_micro" and demo.class_names == list(CLASSES)
    assert demo.config.share and demo.config.pool_kinds  # pooling and sharing are exercised
    training = demo.metadata["training"]
    assert training["command"].startswith("psvit-export train --variant psvit_micro --data synthetic")
    assert 0.7 <= training["heldout_top1"] < 0.97  # clearly learned, clearly not saturated
    assert demo.path.stat().st_size < 4_000_000


def test_demo_reaches_its_recorded_heldout_accuracy(demo):
    split = SyntheticSplit.from_training_metadata(demo.metadata)
    assert split is not None and split.count == 8000 and split.val_fraction == 0.2
    held = split.heldout_indices()
    assert len(held) == 1600 and np.bincount(held % 10).tolist() == [160] * 10  # stratified
    pre = Preprocess.from_dict(demo.preprocess)
    data = load_synthetic(split.count, split.seed, pre, size=split.size, indices=held)
    assert evaluate(demo.model, data, pre) == pytest.approx(demo.metadata["training"]["heldout_top1"], abs=0.01)


def test_demo_generalises_to_a_fresh_seed(demo):
    pre = Preprocess.from_dict(demo.preprocess)
    fresh = generate_synthetic(600, seed=12345, size=demo.metadata["data"]["size"])
    with torch.inference_mode():
        logits = demo.model(torch.from_numpy(pre.batch(list(fresh.images))))  # (600, 10)
    top1 = float((logits.argmax(-1).numpy() == fresh.labels).mean())
    assert top1 == pytest.approx(demo.metadata["training"]["heldout_top1"], abs=0.05)
