"""``psvit-export predict``: user errors, a real kill and --resume, and the Ray Data path on a local cluster."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from psvit.cli import main
from psvit.runtime import predict_to_file, read_predictions
from psvit.runtime.file_inputs import find_images

pytest.importorskip("onnxruntime", reason="the predictions run the demo ONNX (pip install onnxruntime)")
CLI = [sys.executable, "-m", "psvit.cli"]
SUBPROCESS_TIMEOUT_S = 240  # every wait on a child process is bounded by this


def assert_same_predictions(got: list[dict], want: list[dict], ordered: bool = True) -> None:
    """Each path once, the same paths (in the same order if ``ordered``), same top-k, probabilities to 1e-6."""
    paths = [r["path"] for r in got]
    assert len(paths) == len(set(paths)), "a path appears twice"
    if ordered:
        assert paths == [r["path"] for r in want]
    by_path = {r["path"]: r for r in got}
    assert by_path.keys() == {r["path"] for r in want}
    for w in want:
        g = by_path[w["path"]]
        assert (g["indices"], g["names"], g["error"] is None) == (w["indices"], w["names"], w["error"] is None)
        np.testing.assert_allclose(g["probabilities"], w["probabilities"], rtol=1e-6, atol=1e-7)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)


# ---- user errors: exit 2, one message, no traceback, nothing written ------------------------------------
@pytest.mark.parametrize("args, message", [
    (["{onnx}", "{tmp}/nothing/*.png", "--out", "{tmp}/p.jsonl"], "matches no file"),
    (["{onnx}", "{tmp}/missing", "--out", "{tmp}/p.jsonl"], "does not exist"),
    (["{onnx}", "{images}", "--out", "{tmp}/exists.jsonl"], "exists; pass --resume"),
    (["{onnx}", "{images}", "--out", "{tmp}/no/such/folder/p.jsonl"], "does not exist; create it first"),
    (["{onnx}", "{images}", "--out", "/proc/p.jsonl"], "not writable"),
    (["{onnx}", "{images}", "--out", "{tmp}/p.txt"], "name it *.jsonl, *.csv or *.parquet"),
    (["{onnx}", "{images}", "--out", "{tmp}/p.jsonl", "--resume", "--force"], "only one"),
    (["{onnx}", "{images}", "--resume"], "need an output file"),
    (["{onnx}", "{images}", "--ray-actors", "2"], "need --ray"),
    (["{onnx}", "{images}", "--topk", "0"], "--topk"),
    (["{onnx}"], "INPUT"),
])
def test_user_errors_exit_2_with_a_message(demo_fp32_onnx, predict_folder, tmp_path, capsys, args, message):
    if "/proc/p.jsonl" in args and not Path("/proc").is_dir():
        pytest.skip("needs /proc (a folder nobody can write to)")
    (tmp_path / "exists.jsonl").write_text("{}\n")
    before = sorted(tmp_path.iterdir())
    argv = [a.format(onnx=demo_fp32_onnx, tmp=tmp_path, images=predict_folder) for a in args]
    assert main(["predict", *argv]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert message in err and "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before  # nothing written, nothing removed


# ---- a real kill, then --resume ---------------------------------------------------------------------------
def test_killed_run_resumes_to_the_same_file(demo_fp32_onnx, predict_folder, write_image, tmp_path):
    """The run stalls on a named pipe placed in the middle of the inputs (reading it blocks), so it is
    certainly killed midway; a torn last line is added as if the kill hit a write. --resume then gives
    the uninterrupted run's records, in its order, each once."""
    stall = tmp_path / "stall.png"
    os.mkfifo(stall)
    inputs = [f"{predict_folder}/0[0-4]_*", stall, f"{predict_folder}/0[5-9]_*"]
    out = tmp_path / "p.jsonl"
    common = ["predict", demo_fp32_onnx, *inputs, "--topk", "3", "--batch", "8"]
    args = [*common, "--out", out, "--loader-workers", "2"]
    log = tmp_path / "killed.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen([*CLI, *map(str, args)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not (out.is_file() and out.read_bytes().count(b"\n") >= 40):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no output lines in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its loader workers, as an OOM kill or a lost node would
        proc.wait(timeout=SUBPROCESS_TIMEOUT_S)
    written = read_predictions(out)
    files_before_stall = len(find_images(inputs[:1]))
    assert 40 <= len(written) < files_before_stall  # stopped in the middle
    with out.open("ab") as f:
        f.write(b'{"path": "torn')
    stall.unlink()
    write_image("stall.png", colour=(200, 30, 60))

    resumed = run_cli([*args, "--resume", "--json", tmp_path / "summary.json"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["already_done"] == len(written) and summary["predicted"] + summary["failed"] == 261 - len(written)
    predict_to_file(demo_fp32_onnx, inputs, tmp_path / "fresh.jsonl", topk=3, batch=8, loader_workers=0)
    assert_same_predictions(read_predictions(out), read_predictions(tmp_path / "fresh.jsonl"))
    assert len(read_predictions(out)) == 261


def test_ctrl_c_says_the_finished_rows_are_kept(demo_fp32_onnx, predict_folder, tmp_path):
    """Ctrl-C midway (the run stalls on a named pipe): exit 130, and the one line says the rows written so far
    stay for --resume (not "nothing half-written was kept")."""
    stall = tmp_path / "stall.png"
    os.mkfifo(stall)
    out = tmp_path / "p.jsonl"
    args = ["predict", demo_fp32_onnx, f"{predict_folder}/0[0-4]_*", stall, "--out", out, "--batch", "8",
            "--loader-workers", "1"]
    proc = subprocess.Popen([*CLI, *map(str, args)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while not (out.is_file() and out.read_bytes().count(b"\n") >= 40):
            assert proc.poll() is None and time.monotonic() < deadline, "no output lines in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a loader worker still blocked on the pipe
    assert proc.returncode == 130, err
    assert f"stopped by SIGINT; the rows finished so far (if any) are kept in {out}" in " ".join(err.split())
    assert len(read_predictions(out)) >= 40


# ---- Ray Data ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_local_cluster_gives_the_single_process_predictions(demo_fp32_onnx, predict_folder, tmp_path):
    pytest.importorskip("ray.data", reason="the Ray path needs ray[data] (pip install 'psvit-deploy[ray]')")
    predict_to_file(demo_fp32_onnx, [predict_folder], tmp_path / "single.csv", topk=3, batch=16, loader_workers=1)
    on_ray = run_cli(["predict", demo_fp32_onnx, predict_folder, "--topk", "3", "--batch", "16",
                      "--out", tmp_path / "ray.csv", "--ray", "local", "--ray-cpus", "2", "--ray-actors", "2",
                      "--json", tmp_path / "ray.json"], tmp_path)
    assert on_ray.returncode == 0, on_ray.stderr
    want = read_predictions(tmp_path / "single.csv")
    assert_same_predictions(read_predictions(tmp_path / "ray.csv"), want, ordered=False)
    summary = json.loads((tmp_path / "ray.json").read_text())
    assert summary["engine"] == "ray" and summary["runtime"]["cluster"]["actors"] == 2
    assert (summary["predicted"], summary["failed"]) == (257, 3)


def test_outputs_are_written_through_symlinks(demo_fp32_onnx, write_image, tmp_path):
    """An output path that is a symlink keeps being one: the file it points to is replaced (predict --force,
    and every atomically written artifact), as `cp` and shell redirection do."""
    from psvit.provenance import write_json

    write_image("imgs/a.png")
    target, link = tmp_path / "real" / "p.jsonl", tmp_path / "p.jsonl"
    target.parent.mkdir()
    target.write_text("old\n")
    link.symlink_to(target)
    summary = predict_to_file(demo_fp32_onnx, [tmp_path / "imgs"], link, topk=1, force=True)
    assert link.is_symlink() and summary.found == 1 and not summary.failed and summary.out == str(target)
    assert [r["path"] for r in read_predictions(target)] == [str(tmp_path / "imgs" / "a.png")]
    assert (tmp_path / "real" / "p.jsonl.run.json").is_file()  # the run record sits next to the real file
    record_link = tmp_path / "r.json"
    record_link.symlink_to(tmp_path / "real" / "r.json")  # dangling: writing creates its target
    write_json(record_link, {"ok": True})
    assert record_link.is_symlink() and json.loads((tmp_path / "real" / "r.json").read_text()) == {"ok": True}


def test_a_run_that_reads_no_image_fails(tmp_path, capsys):
    """Every file unreadable: the error records are written, and the command exits 1 saying so."""
    (tmp_path / "a.png").write_text("not an image")
    (tmp_path / "b.jpg").write_bytes(b"")
    code = main(["predict", "demo", str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), "--out", str(tmp_path / "p.jsonl")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "none of the 2 image file(s) could be read" in err
    assert all(r["error"] for r in read_predictions(tmp_path / "p.jsonl"))


def test_topk_above_the_class_count_is_said(tmp_path, write_image, capsys):
    write_image("a.png")
    assert main(["predict", "demo", str(tmp_path / "a.png"), "--topk", "20", "--out", str(tmp_path / "p.jsonl")]) == 0
    assert "--topk 20 is more than the model's 10 classes" in " ".join(capsys.readouterr().err.split())
    assert len(read_predictions(tmp_path / "p.jsonl")[0]["indices"]) == 10
