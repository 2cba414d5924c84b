"""Calibration's error paths: damaged caches and evaluation data whose classes are not the model's give a
clear error (a PSViTError; exit 2 from the CLI, no traceback) before anything is written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'psvit-deploy[onnx]'")
pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime: pip install onnxruntime")

from psvit.calibration import CalibrationError, quantize_onnx  # noqa: E402
from psvit.calibration.evaluation import class_mapping, load_eval_set  # noqa: E402
from psvit.cli import main  # noqa: E402
from psvit.errors import DataError  # noqa: E402


def _run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, " ".join((cap.out + cap.err).split())


def _class_folders(root: Path, names: list[str], per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


# ---- the calibration cache ----------------------------------------------------------------------------
@pytest.mark.parametrize("content, why", [
    (b"\xff\xfe\x00binary garbage \x80\x81", "UnicodeDecodeError"),
    (b"[1, 2, 3]", "not a psvit calibration cache"),
    (b'"just a string"', "not a psvit calibration cache"),
    (b'{"format": "psvit-calib-cache/1", "ranges": [1]}', "not a psvit calibration cache"),
    (b"{not json", "JSONDecodeError"),
])
def test_damaged_cache_is_a_clear_error(content: bytes, why: str, demo_fp32_onnx: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    cache = tmp_path / "c.calib.json"
    cache.write_bytes(content)
    with pytest.raises(CalibrationError, match=why):
        quantize_onnx(demo_fp32_onnx, tmp_path / "x.onnx", calib_data="synthetic", calib_count=4, calib_cache=cache)
    code, text = _run(capsys, "calibrate", demo_fp32_onnx, "--calib-data", "synthetic", "--calib-count", "4",
                      "--calib-cache", cache, "--out", tmp_path / "x.onnx")
    assert code == 2 and "Traceback" not in text and "--force-recalibrate" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.calib.json"] and cache.read_bytes() == content


def test_cache_with_odd_data_field_recalibrates(demo_fp32_onnx: Path, tmp_path: Path) -> None:
    """Our format, this model, but a ``data`` entry that is not an object: not reusable, so recalibrated."""
    from psvit.provenance import sha256_file

    cache = tmp_path / "c.calib.json"
    cache.write_text(json.dumps({"format": "psvit-calib-cache/1", "model_sha256": sha256_file(demo_fp32_onnx),
                                 "data": "oops", "ranges": {}}))
    r = quantize_onnx(demo_fp32_onnx, tmp_path / "x.onnx", calib_data="synthetic", calib_count=4,
                      calib_cache=cache, keep_fp32=True)
    assert not r.cache_reused and json.loads(cache.read_text())["data"]["images"] == 4


# ---- evaluation classes ---------------------------------------------------------------------------------
DIGITS = [str(i) for i in range(10)]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_class_mapping_by_name() -> None:
    assert class_mapping(DIGITS, DIGITS, 10) == list(range(10))
    assert class_mapping(["3", "7"], DIGITS, 10) == [3, 7]  # a subset of the classes is fine
    assert class_mapping(["00_circle", "03_cross"], ["circle", "square", "triangle", "cross"], 4) == [0, 3]
    assert class_mapping(["cross", "circle"], ["00_circle", "01_square", "02_cross"], 3) == [2, 0]
    assert class_mapping(["a", "b"], None, 2) == [0, 1]  # the model records no names: by position
    with pytest.raises(DataError, match="zero, one, two.*not classes of the model.*its classes: 0, 1, 2"):
        class_mapping(WORDS, DIGITS, 10)
    with pytest.raises(DataError, match="same class"):
        class_mapping(["circle", "00_circle"], ["circle", "square"], 2)
    with pytest.raises(DataError, match="the model has 10 classes but the evaluation data has 3"):
        class_mapping(["a", "b", "c"], None, 10)


def test_eval_folder_labels_follow_the_model(synthetic_folder: Path, demo_fp32_onnx: Path) -> None:
    """psvit-export data synthetic writes 00_circle ... 09_crescent; the demo model calls them circle ...:
    matched by name, every label is the generator's (index % 10)."""
    from psvit.calibration.model import load_fp32_model
    from psvit.data.image_folder import scan_image_folder

    m = load_fp32_model(demo_fp32_onnx)
    data = load_eval_set(synthetic_folder, preprocess=m.preprocess, metadata=m.metadata)
    index = scan_image_folder(synthetic_folder)
    expected = [int(f.stem) % 10 for f in index.files]
    assert data.labels.tolist() == expected and data.class_names == tuple(m.metadata["psvit.class_names"])
    assert data.source["classes"]["matched_by"] == "name"


def test_eval_classes_refused_before_any_work(demo_fp32_onnx: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """Folders zero..nine for a model trained on 0..9: refused before calibration, nothing written."""
    from psvit.export.metadata import update_metadata_file

    digits_model = tmp_path / "digits.onnx"
    digits_model.write_bytes(demo_fp32_onnx.read_bytes())
    update_metadata_file(digits_model, {"psvit.class_names": json.dumps(DIGITS)})
    words = _class_folders(tmp_path / "words", WORDS)
    out = tmp_path / "out"
    out.mkdir()
    code, text = _run(capsys, "calibrate", digits_model, "--calib-data", "synthetic", "--calib-count", "4",
                      "--out", out / "q.onnx", "--eval-data", words, "--json", out / "r.json")
    assert code == 2 and "Traceback" not in text
    assert "class folders eight, five, four" in text and "not classes of the model" in text and "0, 1, 2" in text
    assert "calibrating" not in text and list(out.iterdir()) == []
