"""The engine sidecar API (read/check), option parsing, timing-cache keys and the inspector-JSON precision
check: pure Python, no TensorRT needed. Inspector samples follow the documented DETAILED JSON format."""
from __future__ import annotations

import hashlib
import json

import pytest

from psvit.export.errors import EngineBuildError
from psvit.export.tensorrt.inspect import check_layer_precisions, parse_engine_information
from psvit.export.tensorrt.options import parse_batch_profile, parse_size
from psvit.export.tensorrt.timing_cache import cache_key, load_cache, save_cache
from psvit.runtime.errors import EngineMismatchError
from psvit.runtime.tensorrt import check_sidecar, read_sidecar, sidecar_path, tensor_precision
from psvit.runtime.tensorrt.sidecar import EngineSidecar, write_sidecar

COMMAND = "psvit-export trt demo --out m.engine --fp16 --builder tensorrt-rtx"


def make_sidecar(engine, *, device=None, cc=None, plan=b"plan-bytes", **changes) -> EngineSidecar:
    engine.write_bytes(plan)
    fields = dict(
        engine_file=engine.name, engine_sha256=hashlib.sha256(plan).hexdigest(), engine_bytes=len(plan),
        flavour="tensorrt_rtx", version="1.7.1.116", device_name=device, compute_capability=cc,
        target={"ahead_of_time": device is None, "compute_capabilities": [cc] if cc else ["8.0", "8.6", "8.9"],
                "key": "aot-sm80-sm86-sm89"},
        precision="fp16", batch=[1, 8, 32], profile={"images": [[1, 3, 32, 32], [8, 3, 32, 32], [32, 3, 32, 32]]},
        static_shapes=None, onnx_path="m.fp16.onnx", onnx_sha256="a" * 64, calibration=None,
        model_config={"img_size": 32}, variant="psvit_micro", class_names=["a", "b"],
        preprocess={"img_size": 32}, source={"description": "demo", "sha256": "b" * 64},
        build_options={"optimization_level": 0, "workspace_bytes": None}, build_seconds=1.0,
        built_at="2026-11-26T00:00:00+00:00", versions={"python": "3.12"}, psvit_deploy_version="0.1.0",
        command=COMMAND,
    )
    fields.update(changes)
    sidecar = EngineSidecar(**fields)
    write_sidecar(sidecar, engine)
    return sidecar


def test_sidecar_round_trip_and_plan_check(tmp_path):
    engine = tmp_path / "m.engine"
    written = make_sidecar(engine)
    assert sidecar_path(engine).name == "m.engine.json"
    assert read_sidecar(engine) == written
    engine.write_bytes(b"another plan")
    with pytest.raises(EngineMismatchError, match="not the plan its sidecar describes") as info:
        read_sidecar(engine)
    assert COMMAND in str(info.value)
    engine.unlink()
    with pytest.raises(EngineMismatchError, match="does not exist"):
        read_sidecar(engine)


def test_missing_and_corrupt_sidecars(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(EngineMismatchError, match="has no sidecar m.engine.json") as info:
        read_sidecar(engine)
    assert "psvit-export trt SOURCE --out ENGINE" in str(info.value)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(EngineMismatchError, match="corrupt"):
        read_sidecar(engine)
    sidecar_path(engine).write_text(json.dumps({"format": "psvit-engine/1", "command": COMMAND}))
    with pytest.raises(EngineMismatchError, match="missing fields: engine_file") as info:
        read_sidecar(engine)
    assert COMMAND in str(info.value)  # the recorded command survives a partly corrupt sidecar
    sidecar_path(engine).write_text(json.dumps({"format": "other/1"}))
    with pytest.raises(EngineMismatchError, match="expected 'psvit-engine/1'"):
        read_sidecar(engine)


def test_check_sidecar_names_each_difference(tmp_path):
    aot = make_sidecar(tmp_path / "aot.engine")
    check_sidecar(aot, flavour="tensorrt-rtx", version="1.7.1.116", device_name="RTX 4090", compute_capability="8.9",
                  onnx_sha256="a" * 64)
    check_sidecar(aot, flavour="tensorrt_rtx", version="1.7.1.116", device_name=None, compute_capability=None)
    with pytest.raises(EngineMismatchError, match="built with tensorrt_rtx 1.7.1.116, this runtime has 1.8.0") as info:
        check_sidecar(aot, flavour="tensorrt_rtx", version="1.8.0", device_name=None, compute_capability=None)
    assert f"rebuild it with: {COMMAND}" in str(info.value)
    with pytest.raises(EngineMismatchError, match="this runtime is tensorrt 10.13"):
        check_sidecar(aot, flavour="tensorrt", version="10.13", device_name=None, compute_capability=None)
    with pytest.raises(EngineMismatchError, match="ahead of time for compute capabilities 8.0, 8.6, 8.9; this GPU"):
        check_sidecar(aot, flavour="tensorrt_rtx", version="1.7.1.116", device_name="H100", compute_capability="9.0")
    with pytest.raises(EngineMismatchError, match="its ONNX changed"):
        check_sidecar(aot, flavour="tensorrt_rtx", version="1.7.1.116", device_name=None, compute_capability=None,
                      onnx_sha256="c" * 64)
    gpu = make_sidecar(tmp_path / "gpu.engine", device="NVIDIA A100", cc="8.0", flavour="tensorrt", version="10.13.0")
    check_sidecar(gpu, flavour="tensorrt", version="10.13.0", device_name="NVIDIA A100", compute_capability="8.0")
    with pytest.raises(EngineMismatchError, match="built for GPU NVIDIA A100 .compute capability 8.0., this GPU is "
                                                  "NVIDIA H100 .compute capability 9.0."):
        check_sidecar(gpu, flavour="tensorrt", version="10.13.0", device_name="NVIDIA H100", compute_capability="9.0")
    with pytest.raises(EngineMismatchError, match="built on GPU NVIDIA A100, this GPU is NVIDIA A30"):
        check_sidecar(gpu, flavour="tensorrt", version="10.13.0", device_name="NVIDIA A30", compute_capability="8.0")
    with pytest.raises(EngineMismatchError) as info:  # every difference at once
        check_sidecar(gpu, flavour="tensorrt", version="11.4", device_name="NVIDIA H100", compute_capability="9.0",
                      onnx_sha256="c" * 64)
    assert all(s in str(info.value) for s in ("11.4", "NVIDIA H100", "ONNX changed"))


@pytest.mark.parametrize("text, expected", [("1:8:32", (1, 8, 32)), ("4", (4, 4, 4)), (" 2:2:2 ", (2, 2, 2)),
                                            (None, None)])
def test_batch_profiles(text, expected):
    assert parse_batch_profile(text) == expected


@pytest.mark.parametrize("text, message", [("8:1:32", "MIN <= OPT <= MAX"), ("0", "positive"), ("1:2", "2 fields"),
                                           ("a:b:c", "not a whole number"), ("-1:2:3", "positive")])
def test_bad_batch_profiles(text, message):
    with pytest.raises(EngineBuildError, match=message):
        parse_batch_profile(text)


def test_sizes():
    assert parse_size("512M") == 512 << 20
    assert parse_size("2G") == 2 << 30
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("4096") == 4096
    assert parse_size(None) is None
    for bad in ("lots", "2X", "0", "-1G"):
        with pytest.raises(EngineBuildError, match="--workspace"):
            parse_size(bad)


def test_timing_cache_is_keyed(tmp_path):
    key = cache_key("tensorrt", "10.13.0", "nvidia-a100-sm80")
    assert key == "tensorrt-10.13.0-nvidia-a100-sm80"
    path = tmp_path / "t.cache"
    assert load_cache(path, key).blob is None
    save_cache(path, key, b"timings")
    assert load_cache(path, key).blob == b"timings"
    other = load_cache(path, cache_key("tensorrt", "10.13.0", "nvidia-h100-sm90"))
    assert other.blob is None and "recorded for tensorrt-10.13.0-nvidia-a100-sm80" in other.note
    (tmp_path / "t.cache.key.json").unlink()  # e.g. a trtexec cache: no key, not loaded
    assert "no key file" in load_cache(path, key).note


def layer(name, kind, *dtypes):
    tensors = [{"Name": f"{name}_{i}", "Location": "Device", "Dimensions": [-1, 17, 64], "Format/Datatype": d}
               for i, d in enumerate(dtypes)]
    return {"Name": name, "LayerType": kind, "Inputs": tensors[:1], "Outputs": tensors[1:], "TacticValue": "0x0"}


def inspector_json(*layers):
    return json.dumps({"Layers": list(layers), "Bindings": ["images", "logits"]})


def test_inspector_precisions():
    assert tensor_precision("Row major linear FP16 format") == "fp16"
    assert tensor_precision("Channel major FP32 format where channel % 4 == 0") == "fp32"
    assert tensor_precision("Half") == "fp16" and tensor_precision("Int8") == "int8"
    assert tensor_precision("Row major linear BF16 format") == "bf16"
    fp16 = inspector_json(
        layer("reformat_in", "Reformat", "Row major linear FP32", "Row major linear FP16 format"),
        layer("blocks.0.attn.qkv", "gemm", "Row major linear FP16 format", "Row major linear FP16 format"),
        layer("blocks.0.norm1", "Myelin", "Row major linear FP32", "Row major linear FP32"),
    )
    report = check_layer_precisions(fp16, "fp16")
    assert report.layers == 2 and report.counts == {"fp16": 1, "fp32": 1}
    with pytest.raises(EngineBuildError, match="lower precision"):
        check_layer_precisions(fp16, "fp32")
    all_fp32 = inspector_json(layer("fc", "gemm", "Row major linear FP32", "Row major linear FP32"),
                              layer("cast", "Reformat", "Row major linear FP32", "Row major linear FP16 format"))
    with pytest.raises(EngineBuildError, match="requested as FP16 but none of its 1 compute layers"):
        check_layer_precisions(all_fp32, "fp16")  # the reformat's FP16 does not count
    assert check_layer_precisions(all_fp32, "fp32").counts == {"fp32": 1}
    int8 = inspector_json(layer("fc1", "gemm", "Row major linear Int8 format", "Row major linear FP16 format"))
    assert check_layer_precisions(int8, "int8").counts == {"int8": 1, "fp16": 1}
    with pytest.raises(EngineBuildError, match="not built with ProfilingVerbosity.DETAILED"):
        parse_engine_information(json.dumps({"Layers": ["fc1", "fc2"]}))
    with pytest.raises(EngineBuildError, match="no 'Layers' list"):
        parse_engine_information("{}")
