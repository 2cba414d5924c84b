"""A real install: the wheel built from this checkout, installed non-editable with the ``[onnx]`` extra in a
fresh virtual environment, runs the bundled-model pipeline from an unrelated folder.

The editable install the other tests use imports every module of the source tree, listed or not; only a
wheel shows a package, data file or dependency that ``pyproject.toml`` forgets. Needs pip's package index
(PyPI on CI) and torch's CPU wheel where pip's configuration finds it (``find-links``); about 2 minutes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the CPU wheel pip's find-links holds on the project's machines
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                 "runs", "out", "*.onnx", "*.engine")

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``cmd`` with a bounded wait; the environment of a user's shell (no PYTHONPATH, no active venv)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                                  f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` folder of a fresh venv holding torch and the wheel of this checkout (``[onnx]``)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"  # a copy: building in the checkout would leave build/ there (and reuse a stale one)
    shutil.copytree(ROOT, src, ignore=IGNORED)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"), str(src)], base, 300)
    (wheel,) = (base / "dist").glob("psvit_deploy-*.whl")
    run([sys.executable, "-m", "venv", str(base / "venv")], base, 120)
    python = base / "venv" / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", TORCH, f"{wheel}[onnx]"],
        base, 600)
    return python.parent


def test_wheel_runs_the_pipeline_from_another_folder(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    cli, python = str(installed / "psvit-export"), str(installed / "python")
    where = run([python, "-c", "import psvit, psvit.runtime, psvit.export, psvit.calibration; print(psvit.__file__)"],
                work, 120)
    assert str(installed.parent) in where.stdout, "psvit was not imported from the fresh venv's wheel install"

    run([cli, "onnx", "demo", "--out", "demo.onnx", "--count", "2", "--json", "export.json"], work, 300)
    assert json.loads((work / "export.json").read_text())["verification"][-1]["passed"] is True
    # 21 images in batches of 8: a count that is not a multiple of the batch
    run([cli, "calibrate", "demo.onnx", "--calib-data", "synthetic", "--calib-count", "21", "--calib-batch", "8",
         "--keep-fp32", "--out", "demo.int8.onnx", "--json", "calibrate.json"], work, 300)
    report = json.loads((work / "calibrate.json").read_text())["quantize"]
    assert report["images"] == 21 and report["qdq_nodes"] > 0

    predict = (
        "import json, sys, numpy as np, psvit.runtime\n"
        "from PIL import Image\n"
        "for i in range(3):\n"
        "    Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(f'img{i}.png')\n"
        "rt = psvit.runtime.load(sys.argv[1])\n"
        "preds = rt.predict([f'img{i}.png' for i in range(3)], topk=2)\n"
        "print(json.dumps({'info': rt.info(), 'classes': rt.class_names,\n"
        "                  'preds': [[(p.name, p.probability) for p in top] for top in preds]}))\n"
    )
    for model, precision in (("demo.onnx", "fp32"), ("demo.int8.onnx", "int8")):
        out = json.loads(run([python, "-c", predict, model], work, 120).stdout.splitlines()[-1])
        assert out["info"]["precision"] == precision and len(out["preds"]) == 3 and len(out["classes"]) == 10
        for top in out["preds"]:
            assert len(top) == 2 and {name for name, _ in top} <= set(out["classes"])
            assert 0 <= top[1][1] <= top[0][1] <= 1
