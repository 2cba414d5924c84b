"""psvit.data: the synthetic generator, image folders, fingerprints, the split and `psvit-export data`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import psvit
from psvit.cli import main
from psvit.data import split_indices
from psvit.data.image_folder import dataset_fingerprint, load_image_folder, scan_image_folder
from psvit.data.synthetic import (
    CLASSES, GENERATOR_VERSION, MANIFEST, class_folder_names, generate_image, generate_synthetic, load_synthetic,
    write_synthetic,
)
from psvit.errors import ConfigError, DataError
from psvit.preprocessing import Preprocess

PRE = Preprocess.from_config(psvit.get_config("psvit_micro"))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- synthetic generator -----------------------------------------------------------------------------
def test_generator_is_deterministic_per_image():
    a, la = generate_image(seed=7, index=3)
    b, lb = generate_image(seed=7, index=3)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and la == lb == 3
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, generate_image(seed=8, index=3)[0])
    # Image i does not depend on how many images are generated: subsets regenerate exactly.
    full = generate_synthetic(20, seed=7)
    part = generate_synthetic(20, seed=7, indices=[13, 3])
    np.testing.assert_array_equal(part.images, full.images[[13, 3]])
    assert part.labels.tolist() == [3, 3]


def test_generated_set_is_balanced_and_varied():
    data = generate_synthetic(50, seed=0, size=24)
    assert data.images.shape == (50, 24, 24, 3)
    assert np.bincount(data.labels).tolist() == [5] * len(CLASSES)
    assert len({img.tobytes() for img in data.images}) == 50
    assert data.fingerprint() == generate_synthetic(50, seed=0, size=24).fingerprint()


def test_write_synthetic_is_byte_identical_for_the_same_seed(tmp_path):
    a = write_synthetic(tmp_path / "a", count=30, seed=5)
    b = write_synthetic(tmp_path / "b", count=30, seed=5)
    c = write_synthetic(tmp_path / "c", count=30, seed=6)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() == fc.keys()
    assert [k for k in fa if k.endswith(".png") and fa[k] != fc[k]]  # different seed, different pixels


def test_written_layout_and_manifest(synthetic_folder):
    assert sorted(p.name for p in synthetic_folder.iterdir() if p.is_dir()) == class_folder_names()
    assert class_folder_names()[0] == "00_circle"
    assert sorted(p.name for p in (synthetic_folder / "03_cross").iterdir()) == [
        "00003.png", "00013.png", "00023.png", "00033.png"]
    meta = json.loads((synthetic_folder / MANIFEST).read_text())
    assert meta["seed"] == 0 and meta["count"] == 40 and meta["size"] == 32
    assert meta["version"] == GENERATOR_VERSION and meta["classes"] == list(CLASSES)
    assert not [p for p in synthetic_folder.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_folder_round_trip_equals_in_memory_generation(synthetic_folder):
    folder = load_image_folder(synthetic_folder, PRE)
    memory = load_synthetic(40, seed=0, preprocess=PRE)
    order = np.argsort([int(Path(f).stem) for f in scan_image_folder(synthetic_folder).files])
    np.testing.assert_array_equal(folder.pixels[order], memory.pixels)
    np.testing.assert_array_equal(folder.labels[order], memory.labels)
    assert folder.class_names == tuple(class_folder_names()) and memory.class_names == CLASSES


def test_refuses_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not empty.*--force"):
        write_synthetic(out, count=10, seed=0)
    assert (out / "keep.txt").exists()
    write_synthetic(out, count=10, seed=0, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / MANIFEST).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # the old copy and temp folders are gone


def test_interrupted_write_leaves_nothing(tmp_path):
    def crash(i: int) -> None:
        if i == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_synthetic(tmp_path / "ds", count=20, seed=0, on_image=crash)
    assert list(tmp_path.iterdir()) == []


def test_write_synthetic_bad_targets(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_synthetic(tmp_path / "file", count=5, seed=0)
    with pytest.raises(DataError, match="mkdir -p"):
        write_synthetic(tmp_path / "no" / "such" / "ds", count=5, seed=0)
    with pytest.raises(DataError, match="at least 1"):
        write_synthetic(tmp_path / "ds", count=0, seed=0)


# ---- image folders -----------------------------------------------------------------------------------
def test_image_folder_finds_files_recursively_case_insensitive(colour_folder, write_image):
    write_image("colours/red/nested/deeper/x.PNG", "RGB", (40, 20), (255, 0, 0))
    write_image("colours/red/.hidden.png")
    (colour_folder / "red" / "notes.txt").write_text("not an image")
    (colour_folder / "dataset.json").write_text("{}")  # files at the top level are ignored
    data = load_image_folder(colour_folder, PRE)
    assert data.class_names == ("blue", "green", "red")
    assert data.class_counts() == [20, 20, 21]
    assert data.pixels.shape == (61, 3, 32, 32) and data.pixels.dtype == np.uint8
    assert data.source["skipped"] == [] and data.source["images"] == 61


def test_corrupt_files_are_skipped_and_counted(colour_folder):
    (colour_folder / "green" / "broken.png").write_bytes(b"\x89PNG truncated")
    (colour_folder / "blue" / "empty.jpg").write_bytes(b"")
    data = load_image_folder(colour_folder, PRE)
    assert len(data) == 60
    assert sorted(data.source["skipped"]) == ["blue/empty.jpg", "green/broken.png"]


def test_image_folder_errors(tmp_path, write_image):
    with pytest.raises(DataError, match="does not exist.*--data synthetic"):
        load_image_folder(tmp_path / "missing", PRE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_image_folder(tmp_path / "empty", PRE)
    (tmp_path / "flat").mkdir()
    write_image("flat/a.png")  # images but no class subfolders
    with pytest.raises(DataError, match="no class subfolders"):
        load_image_folder(tmp_path / "flat", PRE)
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        load_image_folder(tmp_path / "noimg", PRE)
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "cat" / "a.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 1 image files"):
        load_image_folder(tmp_path / "bad", PRE)
    with pytest.raises(DataError, match="not a folder"):
        load_image_folder(write_image("plain.png"), PRE)


def test_symlinked_folders_are_followed_once_and_counted(colour_folder, tmp_path):
    real = colour_folder  # 20 images per class
    data = tmp_path / "data"
    data.mkdir()
    (data / "blue").symlink_to(real / "blue", target_is_directory=True)  # a linked class folder
    shutil.copytree(real / "red", data / "red")
    (data / "red" / "more").symlink_to(real / "green", target_is_directory=True)  # a linked subfolder
    (data / "red" / "loop").symlink_to(data, target_is_directory=True)  # back up the tree: not followed
    (data / "red" / "more2").symlink_to(real / "green", target_is_directory=True)  # the same folder again
    (data / "red" / "gone.png").symlink_to(tmp_path / "missing.png")  # a broken file link: reported
    loaded = load_image_folder(data, PRE)
    assert loaded.class_names == ("blue", "red")
    assert loaded.class_counts() == [20, 40]  # red: its own 20 + green's 20 once; the loop adds nothing
    assert loaded.source["class_counts"] == {"blue": 20, "red": 40}
    assert loaded.source["skipped"] == ["red/gone.png"]
    assert loaded.class_summary() == "2 classes: blue 20, red 40"


def test_a_broken_class_link_and_empty_classes_are_not_silent(colour_folder, tmp_path):
    data = colour_folder
    (data / "yellow").mkdir()
    assert load_image_folder(data, PRE).class_summary() == (
        "4 classes: blue 20, green 20, red 20, yellow 0; no images for yellow (the model can never learn them)")
    (data / "purple").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    with pytest.raises(DataError, match="purple is a symbolic link to .*nowhere, which does not exist; fix or"):
        scan_image_folder(data)


def test_fingerprint_depends_on_relative_paths_and_contents(colour_folder, tmp_path):
    files = scan_image_folder(colour_folder).files
    fp = dataset_fingerprint(files, colour_folder)
    assert fp == load_image_folder(colour_folder, PRE).source["fingerprint"]
    assert fp == dataset_fingerprint(list(reversed(files)), colour_folder)  # order-free
    assert fp == dataset_fingerprint([colour_folder / f for f in files])  # root inferred
    moved = shutil.copytree(colour_folder, tmp_path / "elsewhere" / "colours")
    assert dataset_fingerprint(files, moved) == fp  # location-free
    (moved / "red" / "000.png").rename(moved / "red" / "zzz.png")
    assert dataset_fingerprint(scan_image_folder(moved).files, moved) != fp
    (colour_folder / "red" / "001.png").write_bytes((colour_folder / "red" / "001.png").read_bytes() + b"\0")
    assert dataset_fingerprint(files, colour_folder) != fp


def test_fingerprint_sees_a_changed_byte_of_the_same_size(colour_folder):
    files = scan_image_folder(colour_folder).files
    fp = dataset_fingerprint(files, colour_folder)
    target = colour_folder / "green" / "007.png"
    data = bytearray(target.read_bytes())
    data[-20] ^= 0xFF  # same name, same size, one byte different
    target.write_bytes(bytes(data))
    assert dataset_fingerprint(files, colour_folder) != fp


# ---- split -------------------------------------------------------------------------------------------
def test_split_is_stratified_disjoint_and_deterministic():
    labels = np.arange(103) % 10
    train, held = split_indices(labels, 0.2, seed=3)
    assert np.intersect1d(train, held).size == 0 and len(train) + len(held) == 103
    assert np.bincount(labels[held], minlength=10).tolist() == [2] * 10
    again = split_indices(labels, 0.2, seed=3)
    assert np.array_equal(again[1], held)
    assert not np.array_equal(split_indices(labels, 0.2, seed=4)[1], held)


def test_split_bad_fraction_and_too_few_images():
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            split_indices(np.zeros(10), bad, 0)
    with pytest.raises(DataError, match="too few.*--val-fraction 0"):
        split_indices(np.arange(3), 0.2, 0)  # one image per class: nothing can be held out


def test_split_fraction_zero_trains_on_every_image():
    train, held = split_indices(np.arange(7) % 3, 0.0, seed=1)
    assert train.tolist() == list(range(7)) and held.size == 0


# ---- CLI ---------------------------------------------------------------------------------------------
def test_cli_data_synthetic(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "synthetic", "--out", str(out), "--count", "12", "--seed", "1"]) == 0
    assert "wrote 12 images" in capsys.readouterr().out
    assert json.loads((out / MANIFEST).read_text())["count"] == 12
    assert len(list(out.rglob("*.png"))) == 12

    assert main(["data", "synthetic", "--out", str(out), "--count", "12", "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and "Traceback" not in err
    assert json.loads((out / MANIFEST).read_text())["seed"] == 1  # untouched

    assert main(["data", "synthetic", "--out", str(out), "--count", "12", "--seed", "2", "--force"]) == 0
    assert json.loads((out / MANIFEST).read_text())["seed"] == 2


def test_cli_data_synthetic_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "psvit.cli", "data", "synthetic", "--out", str(tmp_path / "a" / "b"),
         "--count", "5", "--seed", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "mkdir -p" in proc.stderr and "Traceback" not in proc.stderr
