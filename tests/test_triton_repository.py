"""`psvit-export triton`: every config.pbtxt parsed into tritonclient's ModelConfig and compared with the
artifact (ONNX read by onnx, engines built here with TensorRT-RTX); refusals; the Python-backend models and
the image ensemble running on a real tritonserver (the one nvidia-pytriton bundles)."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'psvit-deploy[serve]'")
onnx = pytest.importorskip("onnx")

from psvit.errors import PSViTError  # noqa: E402
from psvit.provenance import sha256_file  # noqa: E402
from psvit.runtime import load  # noqa: E402
from psvit.serve import ServeError, write_repository  # noqa: E402
from psvit.serve.pbtxt import parse  # noqa: E402

TYPES = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.FLOAT16: mc.TYPE_FP16}


def onnx_io(path: Path) -> tuple[tuple, tuple]:
    """(name, Triton type, dims without batch) of the graph's input and first output, read with onnx."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def one(v):
        t = v.type.tensor_type
        return v.name, TYPES[t.elem_type], [d.dim_value for d in t.shape.dim][1:]

    return one(graph.input[0]), one(graph.output[0])


def check_main_config(cfg, name: str, artifact: Path, max_batch: int, kind: int) -> None:
    (in_name, in_type, in_dims), (out_name, out_type, out_dims) = onnx_io(artifact)
    assert cfg.name == name and cfg.max_batch_size == max_batch
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [(in_name, in_type, in_dims)]
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in cfg.output] == [
        (out_name, out_type, out_dims, "labels.txt")]
    assert cfg.HasField("dynamic_batching") and [(g.kind, g.count) for g in cfg.instance_group] == [(kind, 1)]


def check_image_models(repo: Path, name: str, artifact_io: tuple, max_batch: int, topk: int, preprocess: dict,
                       class_names: list[str]) -> None:
    (in_name, in_type, in_dims), (out_name, out_type, out_dims) = artifact_io
    pre = parse(repo / f"{name}_preprocess" / "config.pbtxt")
    assert pre.backend == "python" and pre.max_batch_size == max_batch
    assert [(i.name, i.data_type, list(i.dims)) for i in pre.input] == [("image", mc.TYPE_STRING, [1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in pre.output] == [(in_name, in_type, in_dims)]
    assert json.loads(pre.parameters["preprocess"].string_value) == preprocess
    post = parse(repo / f"{name}_postprocess" / "config.pbtxt")
    assert [(i.name, i.data_type, list(i.dims)) for i in post.input] == [(out_name, out_type, out_dims)]
    assert json.loads(post.parameters["class_names"].string_value) == class_names
    ens = parse(repo / f"{name}_image" / "config.pbtxt")
    assert ens.platform == "ensemble" and ens.max_batch_size == max_batch
    top = [("labels", mc.TYPE_STRING, [topk]), ("probabilities", mc.TYPE_FP32, [topk]),
           ("indices", mc.TYPE_INT32, [topk])]
    assert [(o.name, o.data_type, list(o.dims)) for o in ens.output] == top
    assert [(o.name, o.data_type, list(o.dims)) for o in post.output] == top
    # The steps form a chain: every tensor a step reads is an ensemble input or an earlier step's output, and
    # each step's keys are the tensor names of the model it calls.
    available = {"image"}
    configs = {f"{name}_preprocess": pre, f"{name}_postprocess": post}
    for step in ens.ensemble_scheduling.step:
        model_cfg = configs.get(step.model_name) or parse(repo / step.model_name / "config.pbtxt")
        assert set(step.input_map) == {i.name for i in model_cfg.input}
        assert set(step.output_map) == {o.name for o in model_cfg.output}
        assert set(step.input_map.values()) <= available
        available |= set(step.output_map.values())
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [f"{name}_preprocess", name, f"{name}_postprocess"]
    assert {o.name for o in ens.output} <= available
    assert (repo / f"{name}_image" / "1").is_dir()


def test_onnx_repository_matches_the_artifact(demo_fp32_onnx, tmp_path):
    repo = tmp_path / "repo"
    result = write_repository([demo_fp32_onnx], repo, max_queue_delay_us=250, preferred_batch=[4, 8], topk=3)
    cfg = parse(repo / "psvit" / "config.pbtxt")
    assert cfg.backend == "onnxruntime"
    check_main_config(cfg, "psvit", demo_fp32_onnx, 32, mc.ModelInstanceGroup.KIND_CPU)
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    with load(demo_fp32_onnx) as rt:
        names, preprocess = rt.class_names, rt.backend.preprocess
    assert (repo / "psvit" / "labels.txt").read_text().splitlines() == names
    assert sha256_file(repo / "psvit" / "1" / "model.onnx") == sha256_file(demo_fp32_onnx)
    prov = json.loads((repo / "psvit" / "provenance.json").read_text())
    assert prov["artifact_sha256"] == sha256_file(demo_fp32_onnx) and prov["psvit.preprocess"] == preprocess
    check_image_models(repo, "psvit", onnx_io(demo_fp32_onnx), 32, 3, preprocess, names)
    assert result.models[0].max_batch == 32 and not result.notes
    # The Python models carry psvit's own modules, unchanged, and every psvit module those import.
    import importlib

    vendored = repo / "psvit_preprocess" / "1" / "psvit_vendored"
    copied = {".".join(("psvit", *f.relative_to(vendored).with_suffix("").parts)): f
              for f in vendored.rglob("*.py") if f.name != "__init__.py"}
    assert {"psvit.preprocessing", "psvit.runtime.predict", "psvit.errors"} <= set(copied)
    for module, f in copied.items():
        assert f.read_text() == Path(importlib.import_module(module).__file__).read_text()


@pytest.mark.trt
def test_engine_repository_matches_the_artifact(demo_fp32_onnx, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="builds the engine (pip install tensorrt-rtx)")
    from psvit.export import build_engine_file

    onnx_path = tmp_path / "demo.onnx"
    shutil.copyfile(demo_fp32_onnx, onnx_path)
    engine = tmp_path / "demo.engine"
    build_engine_file(onnx_path, engine, builder="tensorrt-rtx", batch="1:4:12", optimization_level=0)
    sidecar = json.loads((tmp_path / "demo.engine.json").read_text())
    repo = tmp_path / "repo"
    result = write_repository([engine], repo, name="eng", instances=2)
    cfg = parse(repo / "eng" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and not cfg.backend
    (in_name, in_type, in_dims), out = onnx_io(onnx_path)
    assert cfg.max_batch_size == sidecar["profile"][in_name][2][0] == 12  # the profile's max
    profile_max_shape = sidecar["profile"][in_name][2]
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [(in_name, in_type, profile_max_shape[1:])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [out]
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
    assert sha256_file(repo / "eng" / "1" / "model.plan") == sidecar["engine_sha256"]
    assert (repo / "eng" / "labels.txt").read_text().splitlines() == sidecar["class_names"]
    assert json.loads((repo / "eng" / "provenance.json").read_text())["sidecar"] == sidecar
    check_image_models(repo, "eng", onnx_io(onnx_path), 12, 5, sidecar["preprocess"], sidecar["class_names"])
    assert any("TensorRT-RTX" in n for n in result.notes)
    both = write_repository([onnx_path, engine], tmp_path / "both", image_models=False)
    assert [m.name for m in both.models] == ["psvit_demo_onnx", "psvit_demo_engine"]
    assert parse(tmp_path / "both" / "psvit_demo_engine" / "config.pbtxt").platform == "tensorrt_plan"

    # The ONNX gone: the sidecar alone, psvit-export's conventions for the output name and types, said so.
    onnx_path.unlink()
    again = write_repository([engine], tmp_path / "repo2", name="eng", max_batch=8, image_models=False)
    cfg2 = parse(tmp_path / "repo2" / "eng" / "config.pbtxt")
    assert cfg2.max_batch_size == 8 and list(cfg2.input) == list(cfg.input) and list(cfg2.output) == list(cfg.output)
    assert any("conventions" in n for n in again.notes)
    with pytest.raises(ServeError, match="exceeds the engine profile's max batch 12"):
        write_repository([engine], tmp_path / "repo3", max_batch=16)
    with pytest.raises(ServeError, match="runs on a GPU only"):
        write_repository([engine], tmp_path / "repo3", kind="cpu")
    (tmp_path / "demo.engine.json").unlink()  # no sidecar: nothing says what the plan is
    with pytest.raises(PSViTError, match="has no sidecar"):
        write_repository([engine], tmp_path / "repo3")
    assert not (tmp_path / "repo3").exists() or not any((tmp_path / "repo3").iterdir())


def test_refusals_leave_the_repository_untouched(demo_fp32_onnx, tmp_path):
    model = onnx.load(str(demo_fp32_onnx))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4  # a fixed batch of 4
    static = tmp_path / "static.onnx"
    onnx.save(model, str(static))
    repo = tmp_path / "repo"
    with pytest.raises(ServeError, match="fixed batch of 4.*--batch dynamic"):
        write_repository([static], repo)
    assert not repo.exists()
    write_repository([demo_fp32_onnx], repo, image_models=False)
    before = (repo / "psvit" / "config.pbtxt").read_text()
    with pytest.raises(ServeError, match="already exist.*--force"):
        write_repository([demo_fp32_onnx], repo, max_batch=8, image_models=False)
    assert (repo / "psvit" / "config.pbtxt").read_text() == before
    with pytest.raises(ServeError, match="preferred-batch"):
        write_repository([demo_fp32_onnx], repo, preferred_batch=[64], force=True)
    write_repository([demo_fp32_onnx], repo, max_batch=8, image_models=False, force=True)
    assert parse(repo / "psvit" / "config.pbtxt").max_batch_size == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "static.onnx"]  # no staging folder left
    with pytest.raises(ServeError, match="an .onnx file or an engine"):
        write_repository(["demo"], tmp_path / "other")


def test_cli_writes_a_repository_and_reports_errors(demo_fp32_onnx, tmp_path, capsys):
    from psvit.cli import main

    assert main(["triton", str(demo_fp32_onnx), str(demo_fp32_onnx), "--repo", str(tmp_path / "r"), "--name", "m",
                 "--max-batch", "4", "--no-image-models"]) == 2  # two artifacts, one stem: refused
    assert "same model names" in capsys.readouterr().err
    assert main(["triton", str(demo_fp32_onnx), "--repo", str(tmp_path / "r"), "--max-batch", "4",
                 "--preferred-batch", "2,4", "--instances", "3"]) == 0
    cfg = parse(tmp_path / "r" / "psvit" / "config.pbtxt")
    assert cfg.max_batch_size == 4 and cfg.instance_group[0].count == 3
    prov = json.loads((tmp_path / "r" / "psvit" / "provenance.json").read_text())
    assert prov["format"] == "psvit-triton/1"
    assert main(["triton", str(demo_fp32_onnx), "--repo", str(tmp_path / "missing" / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


STAND_IN = '''"""Test stand-in for the onnxruntime backend (absent from the bundled tritonserver): psvit.runtime."""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from psvit.runtime import load

        self.rt = load(Path(args["model_repository"]) / args["model_version"] / "model.onnx")
        config = json.loads(args["model_config"])
        self.inp, self.out = config["input"][0]["name"], config["output"][0]["name"]

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            self.out, self.rt.infer(pb_utils.get_input_tensor_by_name(r, self.inp).as_numpy()))]) for r in requests]
'''


@pytest.mark.slow
def test_image_ensemble_runs_on_a_real_tritonserver(demo_fp32_onnx, tmp_path):
    """The repository as written, except that the main model runs on the Python backend (the bundled server
    has no ONNX Runtime backend): PNG bytes in, the runtime's top-k out; a corrupt upload fails alone."""
    pytest.importorskip("pytriton", reason="bundles tritonserver (pip install 'psvit-deploy[serve]')")
    import tritonclient.http as http
    from PIL import Image
    from tritonclient.utils import InferenceServerException

    from psvit.serve.pbtxt import render
    from serving_helpers import BundledTritonServer

    repo = tmp_path / "repo"
    write_repository([demo_fp32_onnx], repo, max_batch=8, topk=4)
    cfg = parse(repo / "psvit" / "config.pbtxt")
    cfg.backend = "python"
    (repo / "psvit" / "config.pbtxt").write_text(render(cfg))
    (repo / "psvit" / "1" / "model.py").write_text(STAND_IN)
    server = BundledTritonServer(repo, tmp_path)
    try:
        server.wait_ready(["psvit", "psvit_preprocess", "psvit_postprocess", "psvit_image"])
        client = http.InferenceServerClient(server.http)
        images = [_png(s) for s in range(5)]
        inp = http.InferInput("image", [5, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b] for b in images], dtype=np.object_))
        result = client.infer("psvit_image", [inp])
        with load(demo_fp32_onnx) as rt:
            expected = rt.predict([Image.open(io.BytesIO(b)) for b in images], topk=4)
        names = [[p.name for p in r] for r in expected]
        assert [[v.decode() for v in row] for row in result.as_numpy("labels")] == names
        assert result.as_numpy("indices").tolist() == [[p.index for p in r] for r in expected]
        np.testing.assert_allclose(result.as_numpy("probabilities"), [[p.probability for p in r] for r in expected],
                                   rtol=1e-5)
        # Triton's classification extension on the main model: labels.txt names the top class.
        x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
        t = http.InferInput("images", [1, 3, 32, 32], "FP32")
        t.set_data_from_numpy(x)
        top = client.infer("psvit", [t], outputs=[http.InferRequestedOutput("logits", class_count=1)])
        with load(demo_fp32_onnx) as rt:
            best = int(np.argmax(rt.infer(x)[0]))
            assert top.as_numpy("logits")[0][0].decode().endswith(f":{best}:{rt.class_names[best]}")
        bad = http.InferInput("image", [1, 1], "BYTES")
        bad.set_data_from_numpy(np.array([[b"GIF89a broken"]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="not a readable image"):
            client.infer("psvit_image", [bad])
        again = client.infer("psvit_image", [inp])  # the corrupt upload did not disturb the server
        assert again.as_numpy("indices").tolist() == [[p.index for p in r] for r in expected]
        client.close()  # Triton's shutdown waits for open HTTP connections
    finally:
        code = server.stop()
    assert code == 0, server.log()
