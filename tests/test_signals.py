"""SIGTERM and Ctrl-C stop a command cleanly: real ``psvit-export`` processes are signalled mid-work and the
folders are checked afterwards — no hidden temporary file beside the output, nothing left in the temporary
directory, exit 143 / 130 with one line and no traceback. Every wait is bounded."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime.quantization", reason="calibration runs ONNX Runtime (pip install onnxruntime)")

WAIT = 240.0  # seconds: the longest a step may take on a loaded 2-core machine

# Runs psvit-export's entry point; the ONNX writer of the run announces that it is inside its atomic write
# (a file named READY appears) and then takes its time, so the signal lands while the temporary file exists.
SLOW_WRITE = """
import sys, time
from pathlib import Path
import psvit.export.onnx_export as export
from psvit.cli import main
real = export.save_onnx
def slow_save(model, path, **kw):
    result = real(model, path, **kw)
    Path(sys.argv[1]).write_text("ready")
    for _ in range(1200):  # short sleeps: a signal delivered to another thread is handled between them
        time.sleep(0.1)
    return result
export.save_onnx = slow_save
sys.exit(main(sys.argv[2:]))
"""


def _start(args: list[str], cwd: Path, tmpdir: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, TMPDIR=str(tmpdir), COLUMNS="200")
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {WAIT:.0f} s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the command did not stop within {WAIT:.0f} s of {signal.Signals(signum).name}")
    return proc.returncode, err


@pytest.mark.slow
def test_sigterm_during_calibration_leaves_no_temporary_folder(demo_fp32_onnx: Path, tmp_path: Path) -> None:
    """SIGTERM unwinds like Ctrl-C (the same KeyboardInterrupt), so one signal covers both paths."""
    signum, code = signal.SIGTERM, 143
    work, tmpdir = tmp_path / "work", tmp_path / "tmp"
    work.mkdir(), tmpdir.mkdir()
    shutil.copy(demo_fp32_onnx, work / "m.onnx")
    proc = _start(["-m", "psvit.cli", "calibrate", "m.onnx", "--calib-data", "synthetic", "--calib-count", "600",
                   "--calib-method", "percentile", "--out", "m.int8.onnx"], work, tmpdir)
    _wait_for(lambda: any(p.name.startswith("psvit-calib.") for p in tmpdir.iterdir()), proc,
              "calibration folder in the temporary directory")
    returncode, err = _stop(proc, signum)
    assert returncode == code, err
    assert f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err
    assert sorted(p.name for p in work.iterdir()) == ["m.onnx"], "outputs or temporary files were left"
    assert not [p.name for p in tmpdir.iterdir() if p.name.startswith(("psvit", "ort", "tmp"))]


@pytest.mark.slow
def test_sigterm_during_an_atomic_write_removes_the_temporary_file(tmp_path: Path) -> None:
    work, tmpdir = tmp_path / "work", tmp_path / "tmp"
    work.mkdir(), tmpdir.mkdir()
    ready = tmp_path / "READY"
    proc = _start(["-c", SLOW_WRITE, str(ready), "onnx", "demo", "--out", "m.onnx", "--count", "2"], work, tmpdir)
    _wait_for(ready.exists, proc, "atomic write")
    assert [p.name for p in work.iterdir() if p.name.startswith(".m.onnx.")], "the write was not under way"
    returncode, err = _stop(proc, signal.SIGTERM)
    assert returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert list(work.iterdir()) == [], "a temporary file or a half-written output was left beside --out"
    assert not [p.name for p in tmpdir.iterdir() if p.name.startswith(("psvit", "tmp"))]
