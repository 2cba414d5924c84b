"""INT8 calibration (psvit.calibration): Q/DQ placement, numerics on the demo model, cache reuse and
invalidation, calibration data, sensitivity, and TensorRT-RTX builds of the INT8 graphs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'psvit-deploy[onnx]'")
pytest.importorskip("onnxruntime.quantization", reason="needs onnxruntime: pip install onnxruntime")

from psvit.calibration import (  # noqa: E402
    CacheMismatchError, classify, load_calibration_set, plan_recipe, quantize_onnx,
)
from psvit.calibration.methods import mse_threshold  # noqa: E402
from psvit.errors import DataError  # noqa: E402
from psvit.provenance import sha256_file  # noqa: E402

CALIB = 64  # calibration images per test run (synthetic)


@pytest.fixture(scope="module")
def fp32(demo_fp32_onnx: Path) -> Path:
    return demo_fp32_onnx


@pytest.fixture(scope="module")
def int8(fp32: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("int8") / "demo_int8.onnx"
    return quantize_onnx(fp32, out, calib_data="synthetic", calib_count=CALIB)


@pytest.fixture(scope="module")
def int8_qk(fp32: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("int8qk") / "demo_int8_qk.onnx"
    return quantize_onnx(fp32, out, calib_data="synthetic", calib_count=CALIB, quantize_qk=True, keep_fp32=True)


# ---- graph helpers ------------------------------------------------------------------------------------
def _graph(path: Path):
    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return model, producer, inits


def _through_casts(name: str, producer: dict):
    node = producer.get(name)
    while node is not None and node.op_type == "Cast":
        node = producer.get(node.input[0])
    return node


def _dq_inputs(node, producer) -> list:
    return [p for p in (_through_casts(i, producer) for i in node.input[:2]) if p is not None
            and p.op_type == "DequantizeLinear"]


def _axis(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "axis"), None)


def _fp32_kinds(fp32: Path) -> dict[str, str]:
    """The kinds of the graph quantization starts from: Q, K and V merged into one GEMM, nodes named."""
    from psvit.calibration.model import quantization_graph

    return classify(quantization_graph(fp32))


# ---- placement --------------------------------------------------------------------------------------
def test_recipe_identifies_psvit_layers(fp32: Path) -> None:
    kinds = _fp32_kinds(fp32)
    counts = {k: list(kinds.values()).count(k) for k in set(kinds.values())}
    # psvit_micro: 6 blocks x 4 Linear (+ 2 extra v-projections... counted from the graph), 1 patch embed,
    # 2 pooling convs, 1 head; one Softmax per sharing group, its A·V MatMuls
    assert counts["patch_embed"] == 1 and counts["pool"] == 2 and counts["head"] == 1
    assert counts["linear"] >= 24
    m = onnx.load(str(fp32))
    assert counts["av"] == sum(1 for n in m.graph.node for i in n.input
                               if any(s.op_type == "Softmax" and i in s.output for s in m.graph.node))


def test_default_placement(int8, fp32: Path) -> None:
    model, producer, inits = _graph(int8.path)
    nodes = {n.name: n for n in model.graph.node}
    kinds = _fp32_kinds(fp32)
    assert int8.qdq_nodes > 0
    assert set(int8.recipe.quantize) == {n for n, k in kinds.items() if k in ("linear", "patch_embed")}
    for name in int8.recipe.quantize:
        dqs = _dq_inputs(nodes[name], producer)
        assert len(dqs) == 2, f"{name}: both GEMM inputs must be dequantized"
        act, weight = dqs
        w_scale = inits[weight.input[1]]
        assert w_scale.ndim == 1 and w_scale.size > 1, "weights per-channel"
        assert _axis(weight) == (0 if kinds[name] == "patch_embed" else 1)  # output channels
        assert inits[weight.input[0]].dtype == np.int8
        assert inits[act.input[1]].ndim == 0, "activations per-tensor"
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points), "symmetric"
    for name, kind in kinds.items():
        if kind in ("av", "qk", "pool", "head"):
            assert not _dq_inputs(nodes[name], producer), f"{kind} node {name} must not be quantized"


def test_softmax_layernorm_gelu_residual_not_quantized(int8) -> None:
    model, producer, _ = _graph(int8.path)
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            src = _through_casts(n.input[0], producer)
            assert src is None or src.op_type != "Softmax", "attention probabilities must not be quantized"
        if n.op_type in ("LayerNormalization", "Add", "Erf", "Softmax", "Gemm"):  # LN, residual, GELU, head
            sources = [_through_casts(i, producer) for i in n.input]
            assert not [p for p in sources if p is not None and p.op_type == "DequantizeLinear"], n.name
    assert any(n.op_type == "LayerNormalization" for n in model.graph.node)


def test_io_fp32_and_metadata(int8) -> None:
    from psvit.export import read_metadata

    model = onnx.load(str(int8.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = read_metadata(model)
    cal = meta["psvit.calibration"]
    assert meta["psvit.precision"] == "int8" and "psvit.preprocess" in meta
    assert cal["cache_sha256"] == sha256_file(int8.cache_path) == int8.cache_sha256
    assert cal["method"] == "max" and cal["images"] == CALIB and cal["non_quantized_precision"] == "fp16"
    assert cal["recipe"]["quantized"] == {"patch_embed": 1, "linear": len(int8.recipe.quantize) - 1}
    assert any(v.startswith("A·V") for v in cal["recipe"]["excluded"].values())
    assert any(n.op_type == "Cast" for n in model.graph.node), "non-quantized part converted to FP16"


def test_quantize_qk_flag(int8_qk, fp32: Path) -> None:
    model, producer, _ = _graph(int8_qk.path)
    nodes = {n.name: n for n in model.graph.node}
    kinds = _fp32_kinds(fp32)
    for name, kind in kinds.items():
        if kind == "qk":
            assert len(_dq_inputs(nodes[name], producer)) == 2, f"Q·Kᵀ {name} inputs quantized with the flag"
        if kind == "av":
            assert not _dq_inputs(nodes[name], producer)
    assert not any(n.op_type == "Cast" for n in model.graph.node), "--keep-fp32 leaves no FP16 Casts"


def test_exclude_pattern(fp32: Path) -> None:
    m = onnx.load(str(fp32))
    from psvit.export.onnx_io import name_nodes

    name_nodes(m)
    recipe = plan_recipe(m, exclude=("^node_conv2d$",))
    assert "node_conv2d" not in recipe.quantize and recipe.excluded["node_conv2d"] == "--exclude ^node_conv2d$"
    with pytest.raises(Exception, match="regular expression"):
        plan_recipe(m, exclude=("(",))
    with pytest.raises(Exception, match="leave no node"):
        plan_recipe(m, exclude=(".",))


# ---- numerics ---------------------------------------------------------------------------------------
def test_int8_accuracy_on_demo(int8, fp32: Path) -> None:
    """Default recipe on the demo's held-out synthetic images: the issue's target (drop ≤ 0.5 pt,
    top-1 agreement ≥ 99%), on 800 of the 1600 held-out images."""
    from psvit.calibration.evaluation import load_eval_set
    from psvit.calibration.model import load_fp32_model
    from psvit.calibration.report import accuracy_report

    m = load_fp32_model(fp32)
    data = load_eval_set("synthetic", preprocess=m.preprocess, metadata=m.metadata, count=800)
    report = accuracy_report(fp32, int8.path, data)
    assert report["fp32_top1"] > 0.7, "the demo model is trained"
    assert report["top1_agreement"] >= 0.99
    assert report["top1_drop_points"] <= 0.5
    assert report["cosine_mean"] > 0.999


def test_mse_threshold_clips_outliers() -> None:
    values = np.abs(np.random.default_rng(0).standard_normal(1_000_000))
    values[:2] = 60.0  # rare outliers: clipping them costs less than coarser steps for everything else
    hist, edges = np.histogram(values, bins=2048, range=(0, 60.0))
    t = mse_threshold(hist, edges)
    assert 3.0 < t < 30.0  # max would be 60
    hist_u, edges_u = np.histogram(np.random.default_rng(1).uniform(0, 1, 50_000), bins=2048, range=(0, 1))
    assert mse_threshold(hist_u, edges_u) > 0.95  # nothing to clip in a uniform distribution


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_other_methods(method: str, fp32: Path, tmp_path: Path) -> None:
    r = quantize_onnx(fp32, tmp_path / "m.onnx", calib_data="synthetic", calib_count=16, calib_method=method,
                      keep_fp32=True)
    cache = json.loads(r.cache_path.read_text())
    assert cache["method"] == method and r.qdq_nodes > 0 and cache["ranges"]["data"]


# ---- cache --------------------------------------------------------------------------------------------
def _scales(path: Path) -> dict[str, np.ndarray]:
    model, _, inits = _graph(path)
    return {n.input[1]: inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"}


def test_cache_reused(int8, fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / "again.onnx"
    cache_bytes = int8.cache_path.read_bytes()
    again = quantize_onnx(fp32, out, calib_data="synthetic", calib_count=CALIB, calib_cache=int8.cache_path)
    assert again.cache_reused and not int8.cache_reused
    assert int8.cache_path.read_bytes() == cache_bytes, "a reused cache is not rewritten"
    assert again.calibration_seconds == 0.0
    a, b = _scales(int8.path), _scales(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    g1, g2 = onnx.load(str(int8.path)).graph, onnx.load(str(out)).graph
    assert g1.SerializeToString() == g2.SerializeToString(), "same graph bytes"


def test_cache_refused_for_changed_model(int8, fp32: Path, tmp_path: Path) -> None:
    from psvit.export.metadata import update_metadata_file

    other = tmp_path / "other.onnx"
    shutil.copy(fp32, other)
    update_metadata_file(other, {"psvit.note": "changed"})  # different bytes, different sha256
    cache = tmp_path / "c.calib.json"
    shutil.copy(int8.cache_path, cache)
    with pytest.raises(CacheMismatchError, match="another model.*--force-recalibrate"):
        quantize_onnx(other, tmp_path / "o.onnx", calib_data="synthetic", calib_count=CALIB, calib_cache=cache)
    assert not (tmp_path / "o.onnx").exists()
    forced = quantize_onnx(other, tmp_path / "o.onnx", calib_data="synthetic", calib_count=CALIB,
                           calib_cache=cache, force_recalibrate=True, keep_fp32=True)
    assert not forced.cache_reused
    assert json.loads(cache.read_text())["model_sha256"] == sha256_file(other)


def test_cache_recalibrated_for_changed_data(int8, fp32: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c.calib.json"
    shutil.copy(int8.cache_path, cache)
    r = quantize_onnx(fp32, tmp_path / "d.onnx", calib_data="synthetic", calib_count=CALIB // 2, calib_cache=cache,
                      keep_fp32=True)
    assert not r.cache_reused
    assert json.loads(cache.read_text())["data"]["images"] == CALIB // 2


# ---- calibration data ---------------------------------------------------------------------------------
PRE = {"img_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop_pct": 1.0,
       "interpolation": "bilinear"}


def test_folder_skips_unreadable(colour_folder: Path) -> None:
    (colour_folder / "red" / "broken.png").write_bytes(b"not an image")
    (colour_folder / "nested" / "deep").mkdir(parents=True)
    shutil.copy(colour_folder / "red" / "000.png", colour_folder / "nested" / "deep" / "x.png")
    s = load_calibration_set(colour_folder, preprocess=PRE, input_shape=(3, 32, 32), count=1000)
    assert len(s) == 61 and s.skipped == ["red/broken.png"] and s.source["skipped"] == 1
    images = s.take(100)
    assert images.dtype == np.float32 and images.shape == (61, 3, 32, 32)


def _write_images(folder: Path, names: list[str], seed: int) -> list[Path]:
    """40x40 random RGB images (the format from each name's suffix)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / n for n in names]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return paths


def test_changed_image_bytes_recalibrate(fp32: Path, tmp_path: Path) -> None:
    """Same names, same byte sizes, new pixels: a new fingerprint, and the cache is not reused."""
    from psvit.data.image_folder import dataset_fingerprint

    folder, out = tmp_path / "bmps", tmp_path / "b.int8.onnx"
    names = [f"{i:02d}.bmp" for i in range(6)]
    paths = _write_images(folder, names, seed=0)
    sizes = [p.stat().st_size for p in paths]
    first = quantize_onnx(fp32, out, calib_data=folder, keep_fp32=True)
    cache = json.loads(first.cache_path.read_text())["data"]
    assert not first.cache_reused and first.images == 6
    assert cache["fingerprint"] == dataset_fingerprint(names, folder)
    out.unlink()
    _write_images(folder, names, seed=1)
    assert [p.stat().st_size for p in paths] == sizes
    second = quantize_onnx(fp32, out, calib_data=folder, keep_fp32=True)
    assert not second.cache_reused
    assert json.loads(second.cache_path.read_text())["data"]["fingerprint"] != cache["fingerprint"]
    assert quantize_onnx(fp32, out, calib_data=folder, keep_fp32=True).cache_reused  # nothing changed since


def _odd_folder(root: Path) -> tuple[list[str], list[str]]:
    """Five good images and four bad files (truncated JPEG, zero bytes, text, broken link): (good, bad)."""
    good = ["a.png", "b.jpg", "c.png", "d.bmp", "e.png"]
    _write_images(root, good, seed=2)
    jpeg = (root / "b.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    (root / "link.png").symlink_to(root / "nowhere.png")
    return good, ["cut.jpg", "empty.png", "link.png", "text.png"]


def test_images_that_do_not_decode_are_skipped(tmp_path: Path) -> None:
    import warnings

    from psvit.data.image_folder import dataset_fingerprint

    good, bad = _odd_folder(tmp_path / "odd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = load_calibration_set(tmp_path / "odd", preprocess=PRE, input_shape=(3, 32, 32), count=9)
    assert len(s) == 5 and s.skipped == bad and s.source["images"] == 5 and s.source["skipped"] == 4
    assert s.fingerprint == dataset_fingerprint(good, tmp_path / "odd")  # the images used, no others
    (note,) = s.notes
    assert note.startswith("skipped 4 of 9 picked image files that cannot be read: cut.jpg, empty.png, link.png "
                           "and 1 more (cut.jpg: OSError: image file is truncated")
    assert [len(b) for b in s.batches(2)] == [2, 2, 1] and s.take(9).shape == (5, 3, 32, 32)


def test_corrupt_images_skipped_and_calibration_completes(fp32: Path, tmp_path: Path) -> None:
    good, bad = _odd_folder(tmp_path / "odd")
    r = quantize_onnx(fp32, tmp_path / "odd.int8.onnx", calib_data=tmp_path / "odd", keep_fp32=True, calib_batch=2)
    assert r.images == 5 and r.skipped == bad and r.qdq_nodes > 0
    assert any(w.startswith("skipped 4 of 9 picked image files") for w in r.warnings)  # the user is told
    assert json.loads(r.cache_path.read_text())["data"]["images"] == 5


def test_no_decodable_image_is_an_error(tmp_path: Path) -> None:
    _write_images(tmp_path / "one", ["a.jpg"], seed=3)
    jpeg = (tmp_path / "one" / "a.jpg").read_bytes()
    (tmp_path / "one" / "a.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    with pytest.raises(DataError, match=r"none of the 1 image files .*\(first: a.jpg: .*truncated"):
        load_calibration_set(tmp_path / "one", preprocess=PRE, input_shape=(3, 32, 32))


def test_decompression_bomb_warning_is_a_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from PIL import Image

    _write_images(tmp_path / "big", ["big.png"], seed=4)  # 1,600 pixels
    Image.new("RGB", (20, 20)).save(tmp_path / "big" / "small.png")  # 400 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns from 1,000 pixels, refuses from 2,000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a raw Python warning would fail the test
        s = load_calibration_set(tmp_path / "big", preprocess=PRE, input_shape=(3, 32, 32))
    assert len(s) == 1 and s.skipped == ["big.png"]
    assert "big.png (big.png: over PIL's decompression-bomb limit of 1,000 pixels)" in s.notes[0]


def test_more_images_asked_than_found(tmp_path: Path) -> None:
    _odd_folder(tmp_path / "odd")
    s = load_calibration_set(tmp_path / "odd", preprocess=PRE, input_shape=(3, 32, 32), count=100)
    assert s.notes[1] == f"--calib-count asked for 100 images, found 9 in {tmp_path / 'odd'} (4 unreadable): " \
                         f"calibrating on 5"
    assert len(load_calibration_set(tmp_path / "odd", preprocess=PRE, input_shape=(3, 32, 32)).notes) == 1  # default
    arr = np.zeros((3, 3, 32, 32), np.float32)
    assert load_calibration_set(arr, preprocess=PRE, input_shape=(3, 32, 32), count=8).notes == [
        "--calib-count asked for 8 images, found 3 in <array>: calibrating on 3"]


def test_image_changed_after_fingerprinting_is_refused(tmp_path: Path) -> None:
    paths = _write_images(tmp_path / "imgs", ["a.png", "b.png"], seed=5)
    s = load_calibration_set(tmp_path / "imgs", preprocess=PRE, input_shape=(3, 32, 32))
    _write_images(tmp_path / "imgs", ["b.png"], seed=6)
    assert s.take(1).shape == (1, 3, 32, 32)
    with pytest.raises(DataError, match=f"{paths[1]} changed during calibration"):
        s.take(2)


def test_arrays_and_memory(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "x.npz", images=arr)
    a = load_calibration_set(tmp_path / "x.npz", preprocess=PRE, input_shape=(3, 32, 32), count=4)
    b = load_calibration_set(arr, preprocess=PRE, input_shape=(3, 32, 32), count=4)
    assert len(a) == 4 and a.fingerprint == b.fingerprint
    with pytest.raises(DataError, match="4 channels|shape"):
        load_calibration_set(np.zeros((2, 4, 32, 32), np.float32), preprocess=PRE, input_shape=(3, 32, 32))
    with pytest.raises(DataError, match="random data is never used"):
        load_calibration_set(None, preprocess=PRE, input_shape=(3, 32, 32))


def test_in_memory_array_quantizes(fp32: Path, tmp_path: Path) -> None:
    images = load_calibration_set("synthetic", preprocess=PRE, input_shape=(3, 32, 32), count=16).take(16)
    r = quantize_onnx(fp32, tmp_path / "mem.onnx", calib_data=images, keep_fp32=True)
    assert r.images == 16 and r.calibration_data["kind"] == "array"


# ---- sensitivity ----------------------------------------------------------------------------------------
def test_sensitivity_ranks_layers(int8, fp32: Path) -> None:
    from psvit.calibration.sensitivity import layer_sensitivity

    images = load_calibration_set("synthetic", preprocess=PRE, input_shape=(3, 32, 32), count=16).take(16)
    rep = layer_sensitivity(fp32, int8.cache_path, images)
    errs = [x.rel_l2 for x in rep.layers]
    assert len(errs) == len(int8.recipe.quantize) and errs == sorted(errs, reverse=True) and errs[0] > 0
    assert set(rep.suggested_exclusions) <= set(int8.recipe.quantize)


# ---- TensorRT-RTX --------------------------------------------------------------------------------------
@pytest.mark.trt
@pytest.mark.parametrize("which", ["int8", "int8_qk"])
def test_tensorrt_rtx_builds(which: str, request: pytest.FixtureRequest) -> None:
    pytest.importorskip("tensorrt_rtx", reason="needs TensorRT-RTX: pip install tensorrt-rtx")
    from psvit.export import build_engine

    result = request.getfixturevalue(which)
    build = build_engine(result.path, builder="tensorrt_rtx")  # ahead of time, no GPU needed
    assert len(build.plan) > 0
