"""``psvit-export calibrate`` through the real entry point: bad inputs exit 2 with a clear message and
write nothing; a good run writes the INT8 model, the cache and the JSON report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'psvit-deploy[onnx]'")
pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime: pip install onnxruntime")

from psvit.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def fp32(demo_fp32_onnx: Path) -> Path:
    return demo_fp32_onnx


def _run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, " ".join((cap.out + cap.err).split())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_report_json(fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, rep = tmp_path / "int8.onnx", tmp_path / "report.json"
    code, text = _run(capsys, "calibrate", fp32, "--calib-data", "synthetic", "--calib-count", "32", "--out", out,
                      "--eval-data", "synthetic", "--eval-count", "200", "--json", rep)
    assert code == 0, text
    report = json.loads(rep.read_text())
    acc, q = report["accuracy"], report["quantize"]
    assert acc["images"] == 200 and acc["classes"] == 10
    for key in ("fp32_top1", "int8_top1", "fp32_top5", "int8_top5", "top1_agreement", "cosine_mean",
                "top1_drop_points", "rel_l2"):
        assert isinstance(acc[key], float), key
    assert acc["data"]["kind"] == "synthetic held-out" and acc["data"]["val_fraction"] == 0.2
    assert q["cache_path"] == str(out) + ".calib.json" and not q["cache_reused"] and q["qdq_nodes"] > 0
    assert Path(q["cache_path"]).is_file()
    # second run reuses the cache
    code, text = _run(capsys, "calibrate", fp32, "--calib-data", "synthetic", "--calib-count", "32", "--out", out,
                      "--json", rep)
    assert code == 0, text
    assert json.loads(rep.read_text())["quantize"]["cache_reused"] is True


def test_no_calib_data(fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, text = _run(capsys, "calibrate", fp32, "--out", tmp_path / "x.onnx")
    assert code == 2 and "--calib-data" in text and "random data is never used" in text
    assert "Traceback" not in text and _leftovers(tmp_path) == []


def test_empty_and_unreadable_folders(fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, text = _run(capsys, "calibrate", fp32, "--calib-data", empty, "--out", out_dir / "x.onnx")
    assert code == 2 and "holds no image files" in text
    bad = tmp_path / "bad"
    (bad / "a").mkdir(parents=True)
    for i in range(3):
        (bad / "a" / f"{i}.png").write_bytes(b"garbage")
    code, text = _run(capsys, "calibrate", fp32, "--calib-data", bad, "--out", out_dir / "x.onnx")
    assert code == 2 and "none of the 3 image files" in text
    code, text = _run(capsys, "calibrate", fp32, "--calib-data", tmp_path / "missing", "--out", out_dir / "x.onnx")
    assert code == 2 and "does not exist" in text
    assert _leftovers(out_dir) == []


def test_wrong_channels(fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    np.save(tmp_path / "gray.npy", np.zeros((4, 1, 32, 32), np.float32))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, text = _run(capsys, "calibrate", fp32, "--calib-data", tmp_path / "gray.npy", "--out", out_dir / "x.onnx")
    assert code == 2 and "(1, 32, 32)" in text and "(3, 32, 32)" in text
    assert _leftovers(out_dir) == []


def test_model_without_metadata(fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import onnx

    bare = onnx.load(str(fp32))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    code, text = _run(capsys, "calibrate", tmp_path / "bare.onnx", "--calib-data", "synthetic",
                      "--out", tmp_path / "x.onnx")
    assert code == 2 and "no psvit metadata" in text and "psvit-export onnx" in text
    assert not (tmp_path / "x.onnx").exists()


def test_qdq_model_refused_and_changed_model_cache(fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "int8.onnx"
    assert _run(capsys, "calibrate", fp32, "--calib-data", "synthetic", "--calib-count", "16", "--keep-fp32",
                "--out", out)[0] == 0
    code, text = _run(capsys, "calibrate", out, "--calib-data", "synthetic", "--out", tmp_path / "again.onnx")
    assert code == 2 and "already quantized" in text
    from psvit.export.metadata import update_metadata_file

    changed = tmp_path / "changed.onnx"
    shutil.copy(fp32, changed)
    update_metadata_file(changed, {"psvit.note": "retrained"})
    before = out.read_bytes()
    code, text = _run(capsys, "calibrate", changed, "--calib-data", "synthetic", "--calib-count", "16",
                      "--out", out)
    assert code == 2 and "another model" in text and "--force-recalibrate" in text
    assert out.read_bytes() == before, "a refused run leaves the previous output as it was"


def test_bad_method(fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, text = _run(capsys, "calibrate", fp32, "--calib-data", "synthetic", "--calib-method", "kl",
                      "--out", tmp_path / "x.onnx")
    assert code == 2 and "'max', 'percentile', 'entropy', 'mse'" in text


def test_relative_image_folder(fp32: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                               monkeypatch: pytest.MonkeyPatch, synthetic_folder: Path) -> None:
    """A folder given relative to the working directory (as users type it) calibrates and fingerprints."""
    import shutil

    shutil.copytree(synthetic_folder, tmp_path / "calib")
    monkeypatch.chdir(tmp_path)
    code, text = _run(capsys, "calibrate", fp32, "--calib-data", "calib", "--calib-count", "16", "--out", "q.onnx")
    assert code == 0, text
    cache = json.loads((tmp_path / "q.onnx.calib.json").read_text())
    from psvit.data.image_folder import dataset_fingerprint, scan_image_folder

    index = scan_image_folder(tmp_path / "calib")
    assert cache["data"]["images"] == 16 and cache["data"]["source"]["kind"] == "image_folder"
    assert cache["data"]["fingerprint"] != dataset_fingerprint(index.files, index.root)  # 16 of 40 files used
    assert (tmp_path / "q.onnx").is_file()
