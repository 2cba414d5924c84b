"""Streaming calibration (psvit.calibration.collect): the statistics do not depend on how the images are split
into batches (property tests over counts and batch sizes, counts that batches do not divide, fixed-batch
graphs), they equal ONNX Runtime's all-at-once computation, every method works for any count >= 1 and any
batch, and progress is reported per batch.

Stated tolerance: none — min/max and histogram counts are identical for every batching (ORT computes each
image's activations the same way in any batch here), and identical to ORT's all-at-once ones, so the ranges
are too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'psvit-deploy[onnx]'")
pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime: pip install onnxruntime")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from psvit.calibration import load_calibration_set, quantize_onnx  # noqa: E402
from psvit.calibration.collect import StreamingCalibrator, quiet_ort  # noqa: E402
from psvit.calibration.methods import MIN_IMAGES  # noqa: E402
from psvit.calibration.model import load_fp32_model, quantization_graph  # noqa: E402
from psvit.calibration.recipe import OP_TYPES  # noqa: E402

POOL = 40  # synthetic calibration images the property tests draw counts from
PROPERTY = settings(max_examples=10, deadline=None, derandomize=True)  # derandomized: the same cases every run


def _named(fp32: Path, folder: Path) -> Path:
    """The graph calibration streams through (Q, K, V merged, nodes named), saved to ``folder``."""
    path = folder / "named.onnx"
    onnx.save(quantization_graph(fp32), str(path))
    return path


@pytest.fixture(scope="module")
def model(demo_fp32_onnx: Path, tmp_path_factory: pytest.TempPathFactory):
    return load_fp32_model(demo_fp32_onnx), _named(demo_fp32_onnx, tmp_path_factory.mktemp("named"))


@pytest.fixture(scope="module")
def pool(model) -> np.ndarray:
    fp32, _ = model
    return load_calibration_set("synthetic", preprocess=fp32.preprocess, input_shape=fp32.input_shape,
                                count=POOL).take(POOL)  # (40, 3, 32, 32)


@pytest.fixture(scope="module")
def calibrators(model, tmp_path_factory: pytest.TempPathFactory) -> dict[str, StreamingCalibrator]:
    """One calibrator per histogram layout (|x| for percentile/mse, signed for entropy), reused by every case."""
    fp32, named = model
    return {m: StreamingCalibrator(named, m, input_name=fp32.input_name, op_types=OP_TYPES,
                                   workdir=tmp_path_factory.mktemp(m)) for m in ("percentile", "entropy")}


@pytest.fixture(scope="module")
def static_and_dynamic(model, tmp_path_factory: pytest.TempPathFactory) -> tuple[StreamingCalibrator, ...]:
    """Percentile calibrators of the demo exported with a fixed batch of 4 and of the dynamic-batch demo."""
    from psvit.export import export_onnx

    folder = tmp_path_factory.mktemp("static4")
    export_onnx("demo", folder / "demo_b4.onnx", batch=4, count=4)
    fp32_static = load_fp32_model(folder / "demo_b4.onnx")
    assert fp32_static.static_batch == 4
    fp32, named = model
    return (StreamingCalibrator(_named(fp32_static.path, folder), "percentile", input_name=fp32_static.input_name,
                                op_types=OP_TYPES, workdir=folder),
            StreamingCalibrator(named, "percentile", input_name=fp32.input_name, op_types=OP_TYPES,
                                workdir=tmp_path_factory.mktemp("dynamic")))


def _subset(pool: np.ndarray, count: int):
    return load_calibration_set(pool, preprocess={}, input_shape=pool.shape[1:], count=count)


def _assert_same(a, b) -> None:
    assert a.images == b.images and a.minmax.keys() == b.minmax.keys()
    for name, (lo, hi) in a.minmax.items():
        assert np.array_equal(lo, b.minmax[name][0]) and np.array_equal(hi, b.minmax[name][1]), name
    assert a.histograms.counts.keys() == b.histograms.counts.keys()
    for name, hist in a.histograms.counts.items():
        assert np.array_equal(hist, b.histograms.counts[name]), name
        assert np.array_equal(a.histograms.edges[name], b.histograms.edges[name]), name


# ---- batching does not matter ------------------------------------------------------------------------
@PROPERTY
@given(count=st.integers(1, POOL), batch_a=st.integers(1, 17), batch_b=st.integers(1, 17),
       layout=st.sampled_from(["percentile", "entropy"]))
def test_statistics_do_not_depend_on_batching(calibrators, pool, count, batch_a, batch_b, layout) -> None:
    cal = calibrators[layout]
    data = _subset(pool, count)
    a, b = cal.collect(data, batch=batch_a), cal.collect(data, batch=batch_b)
    _assert_same(a, b)
    one = cal.collect(_subset(pool, 1), batch=1).histograms.counts
    for name, hist in a.histograms.counts.items():  # every value of every image counted once
        assert int(hist.sum()) == count * int(one[name].sum()), name


@PROPERTY
@given(count=st.integers(1, 13), batch=st.integers(1, 9))
def test_fixed_batch_graph_counts_real_images_only(static_and_dynamic, pool, count, batch) -> None:
    """A graph with a fixed batch of 4 gets its batch (short batches filled by repeating images); the
    statistics are those of the same images through the dynamic-batch graph (compared as multisets: the two
    exports name their tensors differently), so the repeats are left out."""
    static, dynamic = static_and_dynamic
    data = _subset(pool, count)
    a, b = static.collect(data, batch=batch, static_batch=4), dynamic.collect(data, batch=batch)
    assert a.images == b.images == count
    assert sorted((float(lo), float(hi)) for lo, hi in a.minmax.values()) == \
        sorted((float(lo), float(hi)) for lo, hi in b.minmax.values())
    assert sorted(tuple(h) for h in a.histograms.counts.values()) == \
        sorted(tuple(h) for h in b.histograms.counts.values())


# ---- equal to ONNX Runtime all at once ----------------------------------------------------------------
def _all_at_once(named: Path, images: np.ndarray, input_name: str, kind: str, workdir: Path):
    """The pre-streaming computation: ORT's calibrator given every image in one collect_data call."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    options = {"symmetric": True, "num_bins": 512 if kind == "Entropy" else 2048, "num_quantized_bins": 128}
    with quiet_ort():
        cal = create_calibrator(named, list(OP_TYPES), augmented_model_path=str(workdir / f"ref_{kind}.onnx"),
                                calibrate_method=getattr(CalibrationMethod, kind), extra_options=options)
        cal.collect_data(_Once({input_name: images}))
    return cal


class _Once:
    def __init__(self, feed: dict) -> None:
        self.feed = feed

    def get_next(self) -> dict | None:
        feed, self.feed = self.feed, None
        return feed


def test_entropy_histograms_equal_ort_all_at_once(calibrators, model, pool, tmp_path: Path) -> None:
    fp32, named = model
    images = pool[:23]
    ref = _all_at_once(named, images, fp32.input_name, "Entropy", tmp_path).collector.histogram_dict
    ours = calibrators["entropy"].collect(_subset(pool, 23), batch=5).histograms.ort_layout()
    assert ours.keys() == ref.keys()
    for name, (hist, edges, lo, hi, threshold) in ref.items():
        o_hist, o_edges, o_lo, o_hi, o_threshold = ours[name]
        assert np.array_equal(o_hist, hist) and np.array_equal(o_edges, edges), name
        assert (o_lo, o_hi, o_threshold) == (lo, hi, threshold), name


@pytest.mark.parametrize("method", ["max", "percentile", "mse"])
def test_ranges_match_ort_all_at_once(method: str, model, pool, tmp_path: Path) -> None:
    """23 images in batches of 6 give the ranges ORT computes from all 23 at once, to the bit."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from psvit.calibration.methods import mse_threshold

    fp32, named = model
    images = pool[:23]
    cal = StreamingCalibrator(named, method, input_name=fp32.input_name, op_types=OP_TYPES, workdir=tmp_path)
    ours = cal.ranges(cal.collect(_subset(pool, 23), batch=6))
    if method == "max":
        with quiet_ort():
            ref_cal = create_calibrator(named, list(OP_TYPES), augmented_model_path=str(tmp_path / "ref.onnx"),
                                        calibrate_method=CalibrationMethod.MinMax, extra_options={"symmetric": True})
            ref_cal.collect_data(_Once({fp32.input_name: images}))
            ref = {k: float(v.range_value[1][0]) for k, v in ref_cal.compute_data().items()}
        got = {k: float(v.range_value[1][0]) for k, v in ours.items()}
        assert got == ref
        return
    ref_cal = _all_at_once(named, images, fp32.input_name, "Percentile", tmp_path)
    if method == "percentile":
        with quiet_ort():
            ref = {k: float(v.range_value[1]) for k, v in ref_cal.compute_data().items()}
    else:
        ref = {k: mse_threshold(np.asarray(h), np.asarray(e, np.float64))
               for k, (h, e, *_r) in ref_cal.collector.histogram_dict.items()}
    got = {k: float(v.range_value[1]) for k, v in ours.items()}
    assert got == ref


# ---- every method, any count, any batch ----------------------------------------------------------------
@pytest.mark.parametrize("method", ["max", "percentile", "entropy", "mse"])
def test_every_method_any_count_and_batch(method: str, demo_fp32_onnx: Path, tmp_path: Path) -> None:
    """5 images in batches of 3 (the last one short): each method calibrates, warns that 5 images are too
    few (with the number it needs), and records time per image and peak memory."""
    logged: list[str] = []
    r = quantize_onnx(demo_fp32_onnx, tmp_path / "m.onnx", calib_data="synthetic", calib_count=5, calib_batch=3,
                      calib_method=method, keep_fp32=True, log=logged.append)
    assert r.images == 5 and r.qdq_nodes > 0
    assert len(r.warnings) == 1 and f"5 calibration images are fewer than the {MIN_IMAGES[method]}" in r.warnings[0]
    assert f"warning: {r.warnings[0]}" in logged
    cache = json.loads(r.cache_path.read_text())
    assert cache["data"]["images"] == 5 and cache["run"]["passes"] == (1 if method == "max" else 2)
    assert cache["run"]["batch"] == 3 and cache["run"]["peak_rss_bytes"] > 0
    assert r.peak_rss_bytes >= cache["run"]["peak_rss_bytes"] and r.seconds_per_image > 0
    assert r.seconds_per_image == pytest.approx(r.calibration_seconds / 5)


def test_one_image_warns_and_int8_metadata_is_its_own(demo_fp32_onnx: Path, tmp_path: Path) -> None:
    from psvit.export import read_metadata

    r = quantize_onnx(demo_fp32_onnx, tmp_path / "one.onnx", calib_data="synthetic", calib_count=1,
                      keep_fp32=True)
    assert r.images == 1 and r.warnings == [
        "1 calibration image is fewer than the 256 that max calibration needs for stable ranges; give at least "
        "256 images (--calib-count, default 512)"]
    fp32_meta, int8_meta = read_metadata(demo_fp32_onnx), read_metadata(r.path)
    assert "psvit.verification" in fp32_meta and "psvit.checks" in fp32_meta
    assert "psvit.verification" not in int8_meta and "psvit.checks" not in int8_meta
    assert int8_meta["psvit.precision"] == "int8" and int8_meta["psvit.preprocess"] == fp32_meta["psvit.preprocess"]


# ---- progress --------------------------------------------------------------------------------------------
def test_progress_per_batch(calibrators, pool) -> None:
    events = []
    calibrators["percentile"].collect(_subset(pool, 10), batch=4, progress=events.append)
    assert [(e.step, e.stage, e.done) for e in events] == [
        (1, "ranges", 4), (1, "ranges", 8), (1, "ranges", 10),
        (2, "histograms", 4), (2, "histograms", 8), (2, "histograms", 10)]
    assert all(e.total == 10 and e.steps == 2 and e.images_per_s > 0 and e.eta_s >= 0 for e in events)
    assert events[2].eta_s == 0 and events[-1].eta_s == 0


# ---- the data stream ---------------------------------------------------------------------------------------
def test_batches_and_memory_mapped_arrays(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float64)
    np.save(tmp_path / "x.npy", arr)
    from_file = load_calibration_set(tmp_path / "x.npy", preprocess={}, input_shape=(3, 8, 8), count=9)
    in_memory = load_calibration_set(arr, preprocess={}, input_shape=(3, 8, 8), count=9)
    assert from_file.fingerprint == in_memory.fingerprint and len(from_file) == 9
    assert [len(b) for b in from_file.batches(4)] == [4, 4, 1]
    assert np.array_equal(np.concatenate(list(from_file.batches(4))), arr[:9].astype(np.float32))
    assert all(b.dtype == np.float32 for b in from_file.batches(4))
    arr[7, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", arr)
    from psvit.errors import DataError

    with pytest.raises(DataError, match="NaN or infinite"):  # found while fingerprinting: before any work
        load_calibration_set(tmp_path / "nan.npy", preprocess={}, input_shape=(3, 8, 8))
