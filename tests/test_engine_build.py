"""``build_engine_file`` with the real TensorRT-RTX builder (ahead of time, no GPU): FP32, FP16 and INT8
engines of the micro model and an FP16 224x224 engine, their sidecars, reuse, ``force`` and the precision
rules. Checks that need a runnable engine (inspector, parity) run only with ``tensorrt`` and a GPU."""
from __future__ import annotations

import importlib.util
import shutil

import onnx
import pytest
from onnx import TensorProto

from psvit import pipeline
from psvit.export import EngineBuildError, export_onnx
from psvit.export.metadata import set_metadata
from psvit.pipeline import derived_onnx_path
from psvit.provenance import sha256_file
from psvit.runtime.tensorrt import check_sidecar, read_sidecar

from test_trt_build import attention_graph

RTX = "TensorRT-RTX builds engines on CPU: pip install tensorrt-rtx"
pytestmark = pytest.mark.trt


@pytest.fixture(scope="module")
def trt_rtx():
    return pytest.importorskip("tensorrt_rtx", reason=RTX)


@pytest.fixture(scope="module")
def micro_onnx(tmp_path_factory, trt_rtx):
    """The demo model exported once (FP32, dynamic batch)."""
    out = tmp_path_factory.mktemp("engine") / "demo.onnx"
    export_onnx("demo", out, count=2)
    return out


def build(source, out, **kw):
    kw.setdefault("optimization_level", 0)
    return pipeline.engine(source, out, builder="tensorrt_rtx", **kw)


def test_fp32_engine_sidecar_reuse_and_force(tmp_path, micro_onnx, trt_rtx):
    out = tmp_path / "demo.engine"
    lines: list[str] = []
    phases: list[str] = []
    first = build(micro_onnx, out, batch="1:4:16", workspace="256M", log=lines.append, progress=phases.append)
    assert not first.reused and out.is_file()
    assert any(p.startswith("Building engine") for p in phases)  # IProgressMonitor works without a GPU
    sc = read_sidecar(out)
    assert sc == first.sidecar
    assert sc.engine_sha256 == sha256_file(out) and sc.engine_bytes == out.stat().st_size
    assert (sc.flavour, sc.version, sc.precision) == ("tensorrt_rtx", trt_rtx.__version__, "fp32")
    assert sc.onnx_sha256 == sha256_file(micro_onnx) and sc.onnx_path == str(micro_onnx)
    assert sc.batch == [1, 4, 16] and sc.profile == {"images": [[1, 3, 32, 32], [4, 3, 32, 32], [16, 3, 32, 32]]}
    assert sc.device_name is None and sc.target["ahead_of_time"] and "8.6" in sc.target["compute_capabilities"]
    assert sc.build_options["optimization_level"] == 0 and sc.build_options["workspace_bytes"] == 256 << 20
    assert "no timing cache" in sc.build_options["timing_cache"]
    assert sc.model_config["img_size"] == 32 and sc.class_names and sc.preprocess["mean"]
    assert sc.source["sha256"] and sc.build_seconds > 0 and sc.versions["onnx"]
    assert sc.precision_check["status"].startswith("not run: no GPU")
    check_sidecar(sc, flavour="tensorrt_rtx", version=trt_rtx.__version__, device_name=None,
                  compute_capability="8.9", onnx_sha256=sha256_file(micro_onnx))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.engine", "demo.engine.json"]  # no temporaries

    mtime = out.stat().st_mtime_ns
    lines.clear()
    again = build(micro_onnx, out, batch="1:4:16", workspace="256M", log=lines.append)
    assert again.reused and out.stat().st_mtime_ns == mtime
    assert any(line.startswith("reusing") for line in lines)
    forced = build(micro_onnx, out, batch="1:4:16", workspace="256M", force=True)
    assert not forced.reused and read_sidecar(out).built_at == forced.sidecar.built_at
    other = build(micro_onnx, out, batch="1:8:32", workspace="256M", log=lines.append)  # another profile
    assert not other.reused and any(line.startswith("rebuilding") and "batch" in line for line in lines)

    changed = tmp_path / "changed.onnx"  # same graph, other metadata: another sha256, so a rebuild
    model = onnx.load(str(micro_onnx))
    set_metadata(model, {"psvit.note": "changed"})
    onnx.save(model, str(changed))
    rebuilt = build(changed, out, batch="1:8:32", workspace="256M")
    assert not rebuilt.reused and read_sidecar(out).onnx_sha256 == sha256_file(changed)


def test_fp16_and_int8_from_fp32_onnx(tmp_path, micro_onnx, trt_rtx):
    src = tmp_path / "demo.onnx"
    shutil.copy(micro_onnx, src)
    fp16 = build(src, tmp_path / "demo.fp16.engine", fp16=True)
    assert fp16.sidecar.precision == "fp16" and fp16.onnx_path == tmp_path / "demo.fp16.onnx"
    assert fp16.sidecar.onnx_sha256 == sha256_file(fp16.onnx_path)
    with pytest.raises(EngineBuildError, match="already a FP16 graph"):
        build(fp16.onnx_path, tmp_path / "x.engine", int8=True, calib_data="synthetic")
    as_is = build(fp16.onnx_path, tmp_path / "as_is.engine")  # an FP16 ONNX builds FP16 without flags
    assert as_is.sidecar.precision == "fp16"
    with pytest.raises(EngineBuildError, match="--int8 needs calibration images"):
        build(src, tmp_path / "demo.int8.engine", int8=True)
    int8 = build(src, tmp_path / "demo.int8.engine", int8=True, calib_data="synthetic", calib_count=16)
    sc = int8.sidecar
    assert sc.precision == "int8" and sc.calibration["method"] == "max"
    assert sc.calibration["cache_sha256"] == sha256_file(sc.calibration["cache"])
    with pytest.raises(EngineBuildError, match="already a INT8 graph"):
        build(int8.onnx_path, tmp_path / "y.engine", fp16=True)
    qdq = build(int8.onnx_path, tmp_path / "qdq.engine")  # a Q/DQ ONNX builds INT8 as it is
    assert qdq.sidecar.precision == "int8" and qdq.sidecar.calibration["cache_sha256"] == sc.calibration["cache_sha256"]
    assert not list(tmp_path.glob("x.engine*")) and not list(tmp_path.glob("y.engine*"))


def test_static_graphs_take_only_their_batch(tmp_path, trt_rtx):
    path = attention_graph(tmp_path / "s.onnx", batch=2, dtype=TensorProto.FLOAT16)
    built = build(path, tmp_path / "s.engine", batch="2")
    assert built.sidecar.profile is None and built.sidecar.static_shapes == {"x": [2, 5, 8]}
    assert built.sidecar.precision == "fp16" and built.sidecar.batch is None
    with pytest.raises(EngineBuildError, match="fixed batch 2; --batch must be 2"):
        build(path, tmp_path / "t.engine", batch="1:2:4")
    one_point = build(attention_graph(tmp_path / "d.onnx"), tmp_path / "d.engine", batch="4")
    assert one_point.sidecar.batch == [4, 4, 4]


def test_interrupted_write_leaves_no_plan(tmp_path, micro_onnx, trt_rtx, monkeypatch):
    import psvit.export.tensorrt.engine_file as engine

    def fail(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "write_sidecar", fail)
    with pytest.raises(KeyboardInterrupt):
        build(micro_onnx, tmp_path / "m.engine")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_fp16_engine_224(tmp_path, trt_rtx):
    """One 224x224 variant (random weights) from the variant name: export, FP16 conversion, build."""
    out = tmp_path / "deit_tiny.fp16.engine"
    result = build("deit_tiny", out, fp16=True, batch="1:2:4")
    sc = result.sidecar
    assert sc.precision == "fp16" and sc.profile["images"][2] == [4, 3, 224, 224]
    assert result.onnx_path == derived_onnx_path(out, "fp16") and sc.source["random_weights"]
    assert sc.model_config["img_size"] == 224 and out.stat().st_size > 1e6


@pytest.mark.gpu
def test_engine_checks_on_a_gpu(tmp_path, micro_onnx):
    """On a GPU the build is for that GPU and the inspector precisions and ONNX Runtime parity run through the
    runtime's engine loading; where this TensorRT cannot run its engines on the GPU (TensorRT-RTX on a
    data-centre GPU), the sidecar records why instead."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (PyTorch sees none)")
    builder = "tensorrt" if importlib.util.find_spec("tensorrt") is not None else "tensorrt_rtx"
    for fp16 in (False, True):
        r = pipeline.engine(micro_onnx, tmp_path / f"m{int(fp16)}.engine", fp16=fp16, builder=builder)
        check = r.sidecar.precision_check
        assert r.sidecar.device_name == torch.cuda.get_device_name(0) and not r.sidecar.target["ahead_of_time"]
        if check["status"] == "passed":
            assert check["counts"].get("fp16" if fp16 else "fp32") and check["parity"]["status"] == "passed"
            assert check["parity"]["rel_l2"] <= check["parity"]["max_rel_l2"]
        else:  # e.g. TensorRT-RTX refuses compute capability 9.0: the reason is recorded, nothing is hidden
            assert check["status"].startswith("not run: ") and check["parity"]["status"].startswith("not run")
