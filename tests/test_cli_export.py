"""The ``psvit-export onnx / inspect / compare`` commands through the real entry point ``psvit.cli.main``
(and once through the installed console script): outputs, exit codes, and clean errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from psvit import create_model
from psvit.checkpoint import demo_checkpoint_path
from psvit.cli import main
from psvit.export import DEFAULT_OPSET


def flat(text: str) -> str:
    """Rich wraps long messages at the console width; compare with whitespace collapsed."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """psvit_micro (random weights) exported once through the CLI: (onnx path, report path, stderr)."""
    folder = tmp_path_factory.mktemp("cli")
    out, report = folder / "micro.onnx", folder / "report.json"
    capture = pytest.MonkeyPatch()  # rich prints to sys.stdout/stderr at call time; capture via files
    stdout, stderr = folder / "stdout.txt", folder / "stderr.txt"
    with open(stdout, "w") as so, open(stderr, "w") as se:
        capture.setattr("sys.stdout", so)
        capture.setattr("sys.stderr", se)
        try:
            rc = main(["onnx", "psvit_micro", "--out", str(out), "--count", "4", "--json", str(report)])
        finally:
            capture.undo()
    assert rc == 0, stderr.read_text()
    return out, report, stdout.read_text(), stderr.read_text()


def test_onnx_command(exported):
    out, report, stdout, stderr = exported
    assert out.is_file()
    assert "RANDOM WEIGHTS" in flat(stderr) and "Traceback" not in stderr
    data = json.loads(report.read_text())
    assert data["random_weights"] is True and data["graph"]["ok"] is True
    assert data["verification"][0]["passed"] is True and data["verification"][0]["worst_rel_l2"] <= 1e-5


@pytest.mark.trt
def test_cli_export_builds_with_tensorrt_rtx(exported):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX builds engines on CPU: pip install tensorrt-rtx")
    from psvit.export import build_engine

    assert len(build_engine(exported[0], builder="tensorrt_rtx", optimization_level=0).plan) > 100_000


def test_inspect_json(exported, capsys):
    assert main(["inspect", str(exported[0]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["inputs"] == [{"name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32"}]
    assert info["outputs"][0]["shape"] == ["batch", 10]
    assert info["tokens_per_stage"] == [65, 17, 5]
    assert info["attention_maps"] == 4 and info["shared_maps"] == 2 and info["shape_ops"] == 0
    assert info["node_precision"]["fp16"] == 0 and info["opsets"] == {"ai.onnx": DEFAULT_OPSET}  # the CLI's default
    assert info["metadata"]["psvit.random_weights"] is True
    assert main(["inspect", str(exported[0])]) == 0  # the table renders too (read --json, not the table)


def test_compare_variant_vs_onnx(exported, tmp_path, capsys):
    out_json = tmp_path / "cmp.json"
    assert main(["compare", "psvit_micro", str(exported[0]), "--count", "3", "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    (logits,) = result["outputs"]
    assert logits["rel_l2"] <= 1e-5 and logits["cosine"] > 0.999999 and logits["top1_agreement"] == 1.0
    assert result["samples"] == 3
    # a tolerance turns the comparison into a check
    assert main(["compare", "psvit_micro", str(exported[0]), "--count", "2", "--max-rel-error", "1e-12"]) == 2
    assert "exceeds 1e-12" in flat(capsys.readouterr().err)


def test_compare_with_npy_and_image_folder(exported, tmp_path, capsys):
    from PIL import Image

    npy = tmp_path / "x.npy"
    np.save(npy, np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32))
    assert main(["compare", str(exported[0]), str(exported[0]), "--data", str(npy), "--json",
                 str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["outputs"][0]["rel_l2"] == 0.0
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    assert main(["compare", "psvit_micro", str(exported[0]), "--data", str(tmp_path / "imgs"), "--json",
                 str(tmp_path / "b.json")]) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["samples"] == 4 and result["outputs"][0]["rel_l2"] <= 1e-5
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 3, 64, 64), np.float32))
    assert main(["compare", "psvit_micro", str(exported[0]), "--data", str(bad)]) == 2
    assert "expects (3, 32, 32)" in flat(capsys.readouterr().err)


def _flat_folder(folder: Path, count: int) -> Path:
    """``count`` 40x40 PNGs directly in ``folder``: no class subfolders, no labels."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_flat_image_folder_as_verification_data(exported, tmp_path, capsys):
    """``--data`` takes a flat folder of images (verification needs no labels), for ``onnx`` and ``compare``."""
    flat_dir = _flat_folder(tmp_path / "imgs_normal", 5)
    out, rep = tmp_path / "dd.onnx", tmp_path / "dd.json"
    assert main(["onnx", "psvit_micro", "--out", str(out), "--data", str(flat_dir), "--count", "3",
                 "--json", str(rep)]) == 0, capsys.readouterr().err
    verification = json.loads(rep.read_text())["verification"][0]
    assert verification["passed"] is True and verification["samples"] == 3
    assert main(["compare", "psvit_micro", str(exported[0]), "--data", str(flat_dir), "--json",
                 str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["samples"] == 5
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", "psvit_micro", str(exported[0]), "--data", str(empty)]) == 2
    assert "holds no image files" in flat(capsys.readouterr().err)


@pytest.mark.parametrize("args, message", [
    (["onnx", "psvit_mciro"], "Did you mean psvit_micro"),
    (["onnx", "psvit_micro", "--opset", "16"], "opset 16 is not supported"),
    (["onnx", "psvit_micro", "--batch", "abc"], "'dynamic' or a positive integer"),
    (["onnx", "psvit_micro", "--batch=-2"], "'dynamic' or a positive integer"),
    (["onnx", "psvit_micro", "--fp16-io"], "--fp16-io only applies to an FP16 export"),
    (["onnx", "psvit_micro", "--qk-min-tokens", "20"], "only applies to --shared-attention auto"),
    (["onnx", "psvit_micro", "--shared-attention", "both"], "'both' is not one of 'map', 'qk', 'auto'"),
    (["onnx", "psvit_micro", "--variant", "deit_tiny"], "--variant says 'deit_tiny'"),
    (["onnx", "missing.safetensors"], "does not exist"),
])
def test_onnx_errors(tmp_path, capsys, args, message):
    out = tmp_path / "x.onnx"
    assert main([*args, "--out", str(out)]) == 2
    err = flat(capsys.readouterr().err)
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_output_folder_errors(tmp_path, capsys):
    assert main(["onnx", "psvit_micro", "--out", str(tmp_path / "nope" / "x.onnx")]) == 2
    assert "does not exist; create it first" in flat(capsys.readouterr().err)
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
    elif Path("/sys").is_dir():
        ro = Path("/sys")  # refuses new files even to root
    else:
        pytest.skip("running as root without /sys: no folder refuses writes")
    assert main(["onnx", "psvit_micro", "--out", str(ro / "x.onnx")]) == 2
    assert "not writable" in flat(capsys.readouterr().err)


def test_pth_needs_variant(tmp_path, capsys):
    pth = tmp_path / "w.pth"
    torch.save(create_model("psvit_micro").state_dict(), pth)
    assert main(["onnx", str(pth), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "--variant NAME" in flat(capsys.readouterr().err)
    assert main(["onnx", str(pth), "--variant", "deit_tiny", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "does not fit the model" in flat(capsys.readouterr().err)
    assert not (tmp_path / "x.onnx").exists()


def test_inspect_and_compare_errors(tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model" * 10)
    assert main(["inspect", str(junk)]) == 2
    assert "not a readable ONNX file" in flat(capsys.readouterr().err)
    assert main(["inspect", str(tmp_path / "none.onnx")]) == 2
    assert "does not exist" in flat(capsys.readouterr().err)
    assert main(["compare", "psvit_micro", str(tmp_path / "none.onnx")]) == 2
    assert "does not exist" in flat(capsys.readouterr().err)
    assert main(["compare", "psvit_micro", "deit_tiny"]) == 2
    assert "take different inputs" in flat(capsys.readouterr().err)


def test_console_script_exit_code(tmp_path):
    exe = shutil.which("psvit-export", path=str(Path(os.sys.executable).parent))
    if exe is None:
        pytest.skip("the psvit-export console script is not installed in this environment")
    proc = subprocess.run([exe, "onnx", "nope", "--out", str(tmp_path / "x.onnx")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "unknown variant 'nope'" in flat(proc.stderr)
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not demo_checkpoint_path().is_file(), reason="the bundled demo model is not trained yet")
def test_demo_export(tmp_path, capsys):
    out = tmp_path / "demo.onnx"
    assert main(["onnx", "demo", "--out", str(out), "--count", "4"]) == 0
    captured = capsys.readouterr()
    assert "RANDOM WEIGHTS" not in captured.out + captured.err
    assert main(["compare", "demo", str(out), "--count", "4"]) == 0
