"""Predictions over image files: discovery, the pipelined stream vs Runtime.predict, output files and resume."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CORRUPT_FILES
from psvit.errors import DataError, MissingDependencyError
from psvit.runtime import (
    OutputError, RuntimeInputError, load, predict_files, predict_to_file, read_predictions,
)
from psvit.runtime.file_inputs import find_images
from psvit.runtime.predict_job import run_record_path

pytest.importorskip("onnxruntime", reason="the predictions run the demo ONNX (pip install onnxruntime)")
LOADER_TIMEOUT_S = 120  # bounds every wait on the loader workers in these tests


@pytest.fixture(scope="module")
def runtime(demo_fp32_onnx):
    with load(demo_fp32_onnx) as rt:
        yield rt


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    """Same paths in the same order, same top-k indices and names, probabilities equal to 1e-6."""
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want):
        assert (g["indices"], g["names"], g["error"]) == (w["indices"], w["names"], w["error"]), g["path"]
        np.testing.assert_allclose(g["probabilities"], w["probabilities"], rtol=1e-6, atol=1e-7)


# ---- discovery ---------------------------------------------------------------------------------------
def test_find_images_files_folders_globs_in_a_stable_order(tmp_path, write_image):
    for name in ("b/2.png", "b/1.JPG", "b/sub/3.webp", "b/.hidden/4.png", "b/notes.txt", "c/5.png", "b/6.gif"):
        write_image(name) if name.endswith(("png", "JPG", "webp", "gif")) else (tmp_path / name).write_text("x")
    base = str(tmp_path)
    found = find_images([f"{base}/c/5.png", f"{base}/b", f"{base}/*/5.png", f"{base}/b/*"])
    rel = [os.path.relpath(p, base) for p in found]
    # explicit file first; the folder sorted and recursive (hidden folder and .txt skipped); duplicates once;
    # the glob's folder match expanded
    assert rel == ["c/5.png", "b/1.JPG", "b/2.png", "b/6.gif", "b/sub/3.webp"]
    assert find_images([f"{base}/b/notes.txt"]) == [f"{base}/b/notes.txt"]  # a file named explicitly is taken


@pytest.mark.parametrize("inputs, message", [
    ([], "no inputs"),
    (["{tmp}/missing"], "does not exist"),
    (["{tmp}/*.jpeg"], "matches no file"),
    (["{tmp}/empty"], "holds no image files"),
])
def test_find_images_refuses_inputs_that_name_nothing(tmp_path, inputs, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(DataError, match=message):
        find_images([i.format(tmp=tmp_path) for i in inputs])


# ---- the stream equals Runtime.predict --------------------------------------------------------------
@pytest.mark.parametrize("workers, batch", [(2, 16), (0, 7)])
def test_stream_matches_runtime_predict_image_by_image(runtime, predict_folder, workers, batch):
    with predict_files(runtime, [predict_folder], topk=3, batch=batch, loader_workers=workers,
                       loader_timeout_s=LOADER_TIMEOUT_S) as stream:
        results = list(stream)
    assert [r.path for r in results] == find_images([predict_folder])  # input order, nothing lost
    failed = sorted(os.path.relpath(r.path, predict_folder) for r in results if not r.ok)
    assert failed == sorted(CORRUPT_FILES)
    assert all("not a readable image" in r.error and r.predictions == [] for r in results if not r.ok)
    ok = [r for r in results if r.ok]
    assert stream.stats.images == len(ok) == 257 and stream.stats.failed == 3
    assert stream.stats.batches == -(-260 // batch)
    for r in ok:
        (want,) = runtime.predict([r.path], topk=3)
        assert [p.index for p in r.predictions] == [p.index for p in want], r.path
        assert [p.name for p in r.predictions] == [p.name for p in want]
        np.testing.assert_allclose([p.probability for p in r.predictions], [p.probability for p in want],
                                   rtol=1e-5, atol=1e-7)
    assert stream.stats.decode_s > 0 and stream.stats.infer_s > 0


def test_stream_leaves_out_skipped_paths_and_checks_settings(runtime, predict_folder):
    paths = find_images([predict_folder])
    stream = predict_files(runtime, [predict_folder], skip=set(paths[:250]), loader_workers=0)
    assert [r.path for r in stream] == paths[250:]
    with pytest.raises(RuntimeInputError, match="topk must be at least 1"):
        predict_files(runtime, [predict_folder], topk=0)
    with pytest.raises(RuntimeInputError, match="batch size"):
        predict_files(runtime, [predict_folder], batch=0)


# ---- output files and resume ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_jsonl(demo_fp32_onnx, predict_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "all.jsonl"
    summary = predict_to_file(demo_fp32_onnx, [predict_folder], out, topk=3, batch=16, loader_workers=0)
    assert (summary.stats.images, summary.stats.failed, summary.found) == (257, 3, 260)
    return out


def test_outputs_hold_the_same_records_in_every_format(demo_fp32_onnx, predict_folder, reference_jsonl, tmp_path):
    want = read_predictions(reference_jsonl)
    assert len(want) == 260 and sum(r["error"] is not None for r in want) == 3
    for fmt in ("csv", "parquet"):
        if fmt == "parquet":
            pytest.importorskip("pyarrow", reason="Parquet outputs (pip install 'psvit-deploy[parquet]')")
        out = tmp_path / f"p.{fmt}"
        predict_to_file(demo_fp32_onnx, [predict_folder], out, topk=3, batch=32, loader_workers=1,
                        loader_timeout_s=LOADER_TIMEOUT_S)
        assert_same_records(read_predictions(out), want)
    record = json.loads(run_record_path(reference_jsonl).read_text())
    assert record["topk"] == 3 and len(record["artifact_sha256"]) == 64 and record["runs"][0]["predicted"] == 257


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_after_a_cut_at_any_byte(demo_fp32_onnx, write_image, tmp_path, fmt):
    """Cut a finished output at several byte offsets (inside a record, inside a quoted path with a newline,
    on a line end); resuming gives the uncut file's records, each once."""
    for name in ("imgs/a.png", "imgs/b\nc.png", "imgs/d,e.png", "imgs/f.png", "imgs/g.png"):
        write_image(name, colour=(len(name) * 40 % 255, 90, 10))
    full = tmp_path / f"full.{fmt}"
    predict_to_file(demo_fp32_onnx, [tmp_path / "imgs"], full, topk=2, batch=2, loader_workers=0)
    data = full.read_bytes()
    want = read_predictions(full)
    assert len(want) == 5 and "imgs/b\nc.png" in {os.path.relpath(r["path"], tmp_path) for r in want}
    newline_path = data.index(b"b\nc.png") if fmt == "csv" else len(data) // 2
    for cut in sorted({1, 17, len(data) // 3, newline_path + 2, data.index(b"\n") + 1, len(data) - 1}):
        out = tmp_path / f"cut{cut}.{fmt}"
        out.write_bytes(data[:cut])
        run_record_path(out).write_bytes(run_record_path(full).read_bytes())
        summary = predict_to_file(demo_fp32_onnx, [tmp_path / "imgs"], out, topk=2, batch=2, loader_workers=0,
                                  resume=True)
        got = read_predictions(out)
        assert_same_records(got, want)
        assert summary.already_done + summary.stats.files == 5
    out.write_bytes(data)  # a complete output: nothing to do
    summary = predict_to_file(demo_fp32_onnx, [tmp_path / "imgs"], out, topk=2, loader_workers=0, resume=True)
    assert summary.stats.files == 0 and out.read_bytes() == data


def test_parquet_parts_and_interrupted_part(demo_fp32_onnx, predict_folder, reference_jsonl, tmp_path, monkeypatch):
    pytest.importorskip("pyarrow", reason="Parquet outputs (pip install 'psvit-deploy[parquet]')")
    from psvit.runtime import prediction_output

    monkeypatch.setattr(prediction_output, "PARQUET_ROWS_PER_PART", 100)
    out = tmp_path / "p.parquet"
    predict_to_file(demo_fp32_onnx, [predict_folder], out, topk=3, batch=25, loader_workers=0)  # parts of 100
    parts = sorted(p.name for p in out.iterdir())
    assert parts == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    (out / parts[-1]).rename(out / ".part-000002.parquet.tmp")  # the last part's write was interrupted
    summary = predict_to_file(demo_fp32_onnx, [predict_folder], out, topk=3, batch=32, loader_workers=0,
                              resume=True)
    assert summary.already_done == 200 and summary.stats.files == 60
    assert sorted(p.name for p in out.iterdir()) == ["part-000000.parquet", "part-000001.parquet",
                                                     "part-000002.parquet"]
    assert_same_records(read_predictions(out), read_predictions(reference_jsonl))


# ---- refusals --------------------------------------------------------------------------------------------
def test_existing_output_is_refused_without_resume_or_force(demo_fp32_onnx, predict_folder, tmp_path):
    out = tmp_path / "p.jsonl"
    out.write_text("mine\n")
    for kwargs, message in (({}, "exists; pass --resume"), ({"resume": True, "force": True}, "only one"),
                            ({"resume": True}, "p.jsonl.run.json is missing")):
        with pytest.raises(OutputError, match=message):
            predict_to_file(demo_fp32_onnx, [predict_folder], out, **kwargs)
    assert out.read_text() == "mine\n"  # untouched
    predict_to_file(demo_fp32_onnx, [predict_folder], out, topk=1, force=True, loader_workers=0)
    assert len(read_predictions(out)) == 260
    with pytest.raises(OutputError, match="--topk 1, this run has 2"):
        predict_to_file(demo_fp32_onnx, [predict_folder], out, topk=2, resume=True)


def test_failed_load_leaves_no_output(predict_folder, tmp_path):
    out = tmp_path / "p.csv"
    with pytest.raises(Exception, match="does not exist"):
        predict_to_file(tmp_path / "missing.onnx", [predict_folder], out)
    assert list(tmp_path.iterdir()) == []


def test_missing_optional_packages_name_the_pip_command(demo_fp32_onnx, predict_folder, tmp_path, monkeypatch):
    from psvit.runtime.ray_predict import RaySettings

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'psvit-deploy\[parquet\]'"):
        predict_to_file(demo_fp32_onnx, [predict_folder], tmp_path / "p.parquet")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'psvit-deploy\[ray\]'"):
        predict_to_file(demo_fp32_onnx, [predict_folder], tmp_path / "p.jsonl", ray=RaySettings())
    assert list(tmp_path.iterdir()) == []


def test_grayscale_palette_and_rgba_files_predict_like_runtime_predict(runtime, write_image, tmp_path):
    """Grayscale, palette and RGBA files are converted, as Runtime.predict does."""
    paths = [write_image("g.png", "L", colour=90), write_image("p.png", "P", colour=3),
             write_image("a.png", "RGBA", colour=(10, 200, 30, 128))]
    results = list(predict_files(runtime, [str(p) for p in paths], topk=2, loader_workers=0))
    assert all(r.ok for r in results)
    for r, p in zip(results, paths):
        assert [x.index for x in r.predictions] == [x.index for x in runtime.predict([p], topk=2)[0]]


def test_throughput_runs_turn_ort_spinning_off(demo_fp32_onnx):
    from psvit.runtime.file_predict import throughput_options

    assert throughput_options(demo_fp32_onnx, {"threads": 2}) == {"threads": 2, "spinning": False}
    assert throughput_options(demo_fp32_onnx, {"spinning": True}) == {"spinning": True}  # the caller's choice
    assert throughput_options("demo", {}) == {}  # PyTorch has no such option
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    with load(demo_fp32_onnx, spinning=False) as quiet, load(demo_fp32_onnx) as default:
        options = quiet.backend.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        np.testing.assert_array_equal(quiet.infer(x), default.infer(x))


def test_a_hanging_read_ends_with_the_loader_timeout(runtime, predict_folder, tmp_path):
    """A named pipe blocks its reader forever: with a timeout the stream stops with a message naming it."""
    stall = tmp_path / "stall.png"
    os.mkfifo(stall)
    try:
        with pytest.raises(DataError, match=r"no batch within 1 s \(files .*stall.png"):
            with predict_files(runtime, [stall], loader_workers=1, loader_timeout_s=1) as stream:
                list(stream)
    finally:
        with contextlib.suppress(OSError):  # release a worker still stuck in open() (else it was stopped)
            os.close(os.open(stall, os.O_WRONLY | os.O_NONBLOCK))
