"""SIGTERM and Ctrl-C stop a command cleanly: real ``psvit-export`` processes are signalled mid-work and the
folders are checked afterwards — no hidden temporary file beside the output, nothing left in the temporary
directory, exit 143 / 130 with one line and no traceback. Every wait is bounded.

A TensorRT build swallows an exception raised in its Python callbacks, so the engine-build tests signal the
process from the build's own progress callback (no timing luck): the build must cancel, raise, and leave
no engine or sidecar. Tracing: a ``KeyboardInterrupt`` wrapped by torch's exporter is found and re-raised."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from psvit.cli.signals import signals_unwind

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


def _finish(proc: subprocess.Popen[str], after: str) -> tuple[int, str]:
    """(exit code, stderr) of a signalled process; fails the test if it does not end within WAIT."""
    try:
        _, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the command did not stop within {WAIT:.0f} s of {after}")
    return proc.returncode, err


def _stop(proc: subprocess.Popen[str], signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    return _finish(proc, signal.Signals(signum).name)


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


RTX = "TensorRT-RTX builds engines on CPU: pip install tensorrt-rtx"

# psvit-export's entry point, whose build signals its own process at the builder's first progress line
# (argv[1]: how many SIGINTs), as a user pressing Ctrl-C once or twice while TensorRT builds.
SIGNAL_IN_BUILD = """
import os, signal, sys
import psvit.cli.trt as trt
real = trt._Status.progress
def progress(self, phase):
    if not getattr(self, "signalled", False):
        self.signalled = True
        for _ in range(int(sys.argv[1])):
            os.kill(os.getpid(), signal.SIGINT)
    real(self, phase)
trt._Status.progress = progress
from psvit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def signal_at_first_progress(signum: int) -> Callable[[str], None]:
    """A ``progress`` callback that sends this process ``signum`` at the builder's first progress line."""
    sent: list[int] = []

    def progress(_line: str) -> None:
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)

    return progress


@pytest.mark.trt
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_an_engine_build_cancels_it_and_writes_nothing(signum: int, demo_fp32_onnx: Path,
                                                                       tmp_path: Path) -> None:
    """Under the CLI's handlers: the build stops at its next step (TensorRT cancels it), the handler's
    KeyboardInterrupt comes out of the build, no engine or sidecar is written, the handlers are restored."""
    pytest.importorskip("tensorrt_rtx", reason=RTX)
    from psvit import pipeline
    from psvit.export import EngineBuildError

    handled = (signal.SIGINT, signal.SIGTERM)
    with signals_unwind() as received:
        before = [signal.getsignal(s) for s in handled]
        with pytest.raises(KeyboardInterrupt) as info:
            pipeline.engine(demo_fp32_onnx, tmp_path / "m.engine", builder="tensorrt_rtx", optimization_level=0,
                            progress=signal_at_first_progress(signum))
        after = [signal.getsignal(s) for s in handled]
    assert received.signum == signum and received.exit_code == 128 + signum
    assert isinstance(info.value.__context__, EngineBuildError), "TensorRT built on instead of cancelling"
    assert "BuildCanceled" in str(info.value.__context__), info.value.__context__
    assert list(tmp_path.iterdir()) == [], "an engine, sidecar or temporary file was left"
    assert after == before, "the build left its own signal handlers installed"


@pytest.mark.trt
def test_ctrl_c_during_an_engine_build_without_the_cli(demo_fp32_onnx: Path) -> None:
    """With Python's own Ctrl-C handling (library use) the build is cancelled and raises KeyboardInterrupt."""
    pytest.importorskip("tensorrt_rtx", reason=RTX)
    from psvit.export.tensorrt import build_engine

    with pytest.raises(KeyboardInterrupt):
        build_engine(demo_fp32_onnx, builder="tensorrt_rtx", optimization_level=0,
                     progress=signal_at_first_progress(signal.SIGINT))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.trt
@pytest.mark.slow
@pytest.mark.parametrize("presses", [1, 2], ids=["once", "twice"])
def test_ctrl_c_during_trt_command(presses: int, demo_fp32_onnx: Path, tmp_path: Path) -> None:
    """One Ctrl-C: exit 130 with one line, nothing written. A second one (a build that did not stop) ends the
    process at once by the signal's default action — still before anything is written."""
    pytest.importorskip("tensorrt_rtx", reason=RTX)
    work, tmpdir = tmp_path / "work", tmp_path / "tmp"
    work.mkdir(), tmpdir.mkdir()
    shutil.copy(demo_fp32_onnx, work / "m.onnx")
    proc = _start(["-c", SIGNAL_IN_BUILD, str(presses), "trt", "m.onnx", "--out", "m.engine", "--builder",
                   "tensorrt-rtx", "--optimization-level", "0"], work, tmpdir)
    code, err = _finish(proc, "Ctrl-C")
    if presses == 1:
        assert code == 130, err
        assert "stopped by SIGINT" in err and "Traceback" not in err and "BuildCanceled" not in err, err
    else:
        assert code == -signal.SIGINT, err
    assert sorted(p.name for p in work.iterdir()) == ["m.onnx"], "an engine, sidecar or temporary file was left"


def test_wrapped_interrupt_finds_a_keyboard_interrupt_in_the_chain() -> None:
    from psvit.export.trace import wrapped_interrupt

    ki = KeyboardInterrupt("SIGTERM")
    assert wrapped_interrupt(ki) is ki
    caused = RuntimeError("torch.export failed")
    caused.__cause__ = ValueError("inner")
    caused.__cause__.__cause__ = ki
    assert wrapped_interrupt(caused) is ki
    context = RuntimeError("during handling")
    context.__context__ = ki
    assert wrapped_interrupt(context) is ki
    both = RuntimeError("raise X from Y while handling Z")  # the interrupt on the __context__ branch only
    both.__cause__, both.__context__ = ValueError("Y"), context
    assert wrapped_interrupt(both) is ki
    loop_a, loop_b = RuntimeError("a"), RuntimeError("b")
    loop_a.__context__, loop_b.__context__ = loop_b, loop_a
    assert wrapped_interrupt(loop_a) is None
    assert wrapped_interrupt(ValueError("a model error")) is None
    try:
        try:
            raise KeyboardInterrupt("SIGINT")
        except KeyboardInterrupt as real:
            raise RuntimeError("wrapped") from real
    except RuntimeError as wrapped:
        assert isinstance(wrapped_interrupt(wrapped), KeyboardInterrupt)


def test_export_errors_lose_terminal_colours() -> None:
    from psvit.export.trace import _export_error, strip_ansi

    message = ("Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of exporting the "
               "model to ONNX. Next steps:\n- Modify the model code")
    assert strip_ansi(message).splitlines()[0] == ("Failed to export the model with torch.export. This is step 1/3 "
                                                   "of exporting the model to ONNX. Next steps:")
    assert strip_ansi("\x1b[1;31mred\x1b[m \x1b]8;;https://x\x1b\\link\x1b]8;;\x07 \x1b(Bok") == "red link ok"
    assert strip_ansi("plain [96m text") == "plain [96m text"
    error = str(_export_error(RuntimeError(message)))
    assert "\x1b" not in error and error.endswith("This is step 1/3 of exporting the model to ONNX. Next steps:")
