"""The package structure as promises that can fail: imports point one way (model library <- runtime <-
export <- calibration <- pipeline/CLI), only the runtime creates ONNX Runtime sessions or deserialises
engines, ``import psvit.runtime`` and loading an ONNX file leave torch and onnx out, and a service without
onnx, onnxscript and torch reads an engine's metadata and is told about the missing GPU."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> package name (pyproject's package-dir)
FOLDERS = {"psvit": "psvit", "runtime": "psvit.runtime", "export": "psvit.export",
           "calibration": "psvit.calibration", "serve": "psvit.serve", "search": "psvit.search"}
# pipeline level: may import everything
TOP = ("psvit.cli", "psvit.demo", "psvit.pipeline", "psvit.serve", "psvit.search")
LAYER = {"library": 0, "runtime": 1, "export": 2, "calibration": 3, "top": 4}
HEAVY = ("onnx", "onnxscript", "torch")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([FOLDERS[parts[0]], *parts[1:]])


def layer_of(module: str) -> str | None:
    """The layer of a psvit module; None for third-party modules."""
    if module != "psvit" and not module.startswith("psvit."):
        return None
    if module.startswith(TOP) or any(module == t for t in TOP):
        return "top"
    for name in ("runtime", "export", "calibration"):
        if module == f"psvit.{name}" or module.startswith(f"psvit.{name}."):
            return name
    return "library"


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(absolute module, line, at module level) of every import in ``path``, in functions too."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno, id(node) in top_level))
            for alias in node.names:  # "from . import info": the submodule itself
                found.append((f"{target}.{alias.name}", node.lineno, id(node) in top_level))
    return found


def package_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_imports_point_one_way():
    wrong = []
    for path in package_files():
        here = layer_of(module_name(path))
        for target, line, _ in imports_of(path):
            there = layer_of(target)
            if there is None or there == here:
                continue
            if LAYER[there] > LAYER[here] or (here == "export" and there == "calibration"):
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({here}) imports {target} ({there})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_import_checker_sees_imports_inside_functions(tmp_path):
    """The rule above would miss nothing: a function-level upward import is found and resolved."""
    fake = ROOT / "runtime" / "tests_probe_module.py"
    imports = None
    try:
        fake.write_text("def f():\n    from ..export import sources\n    import psvit.calibration\n")
        imports = {t for t, _, top in imports_of(fake) if not top}
    finally:
        fake.unlink()
    assert {"psvit.export", "psvit.export.sources", "psvit.calibration"} <= imports
    assert layer_of("psvit.export.sources") == "export" and layer_of("psvit.pipeline") == "top"


def test_tensorrt_core_imports_no_heavy_module_at_import_time():
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        for target, line, top in imports_of(path):
            if top and target.split(".")[0] in HEAVY:
                raise AssertionError(f"{path.relative_to(ROOT)}:{line} imports {target} at module level")


SESSION, DESERIALISE = "InferenceSession" "(", "deserialize" "_cuda_engine"  # split: `git grep` finds only runtime/


def test_only_the_runtime_creates_sessions_and_deserialises_engines():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0].startswith(".") or rel.parts[0] in ("build", "tests") or "site-packages" in rel.parts:
            continue
        text = path.read_text()
        for needle in (SESSION, DESERIALISE):
            if needle in text and rel.parts[0] != "runtime":
                found.append(f"{rel}: {needle}")
    assert not found, found
    for path in sorted((ROOT / "tests").rglob("*.py")):  # the tests go through the runtime too
        if path.name != Path(__file__).name:
            assert SESSION not in path.read_text(), path.name


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_runtime_loads_onnx_without_torch_or_onnx(demo_fp32_onnx):
    pytest.importorskip("onnxruntime", reason="runs the ONNX file (pip install onnxruntime)")
    code = (
        "import sys, json\n"
        "import psvit.runtime\n"
        "rt = psvit.runtime.load(sys.argv[1])\n"
        "import numpy as np\n"
        "out = rt.infer(np.zeros((2, 3, 32, 32), np.float32))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'onnx': 'onnx' in sys.modules,\n"
        "                  'shape': list(out.shape)}))\n"
    )
    proc = _python(code, str(demo_fp32_onnx))
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.splitlines()[-1])
    assert facts["torch"] is False and facts["onnx"] is False
    assert facts["shape"] == [2, 10]


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('onnx', 'onnxscript', 'torch'):
            raise ImportError(f'{name} is blocked in this test (not installed)')
        return None
sys.meta_path.insert(0, Block())
"""


def test_engine_metadata_and_missing_gpu_without_onnx_onnxscript_torch(tmp_path):
    """A service that installed only the runtime and TensorRT: the sidecar reads, the engine is recognised,
    and loading names what is really missing (the GPU; torch on a GPU machine), never onnx."""
    import hashlib

    from psvit.runtime.tensorrt.sidecar import EngineSidecar, write_sidecar

    engine = tmp_path / "m.engine"
    plan = b"vtrt" + bytes(60)  # a TensorRT-RTX plan header; never deserialised here
    engine.write_bytes(plan)
    write_sidecar(EngineSidecar(
        engine_file=engine.name, engine_sha256=hashlib.sha256(plan).hexdigest(), engine_bytes=len(plan),
        flavour="tensorrt_rtx", version="0", device_name=None, compute_capability=None,
        target={"ahead_of_time": True, "compute_capabilities": ["8.6"], "key": "aot-sm86"}, precision="fp16",
        batch=[1, 2, 4], profile={"images": [[1, 3, 32, 32], [2, 3, 32, 32], [4, 3, 32, 32]]}, static_shapes=None,
        onnx_path="m.onnx", onnx_sha256="a" * 64, calibration=None, model_config=None, variant="psvit_micro",
        class_names=["a"], preprocess=None, source={"description": "test"}, build_options={}, build_seconds=0.0,
        built_at="2026-12-01T00:00:00+00:00", versions={}, psvit_deploy_version=None, command="psvit-export trt",
    ), engine)
    code = BLOCKER + (
        "import json\n"
        "from psvit.artifacts import detect_artifact\n"
        "from psvit.runtime.tensorrt import read_sidecar\n"
        "import psvit.runtime as prt\n"
        "sc = read_sidecar(sys.argv[1])\n"
        "kind = detect_artifact(sys.argv[1]).kind.value\n"
        "try:\n"
        "    prt.load(sys.argv[1])\n"
        "    error = None\n"
        "except prt.ArtifactError as exc:\n"
        "    error = 'artifact: ' + str(exc)\n"
        "except Exception as exc:\n"
        "    error = type(exc).__name__ + ': ' + str(exc)\n"
        "print(json.dumps({'precision': sc.precision, 'profile': sc.profile, 'kind': kind, 'error': error,\n"
        "                  'torch': 'torch' in sys.modules}))\n"
    )
    proc = _python(code, str(engine))
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.splitlines()[-1])
    assert facts["precision"] == "fp16" and facts["profile"]["images"][2] == [4, 3, 32, 32]
    assert facts["kind"] == "engine" and facts["torch"] is False
    error = facts["error"]
    assert error and "onnx" not in error.lower(), error
    from psvit.runtime.tensorrt import cuda_devices

    if cuda_devices():  # a GPU: TensorRT-RTX or torch is what is missing (or the version check)
        assert "tensorrt" in error.lower() or "torch" in error.lower() or "version" in error.lower(), error
    else:
        assert "runs on an NVIDIA GPU, and none is visible" in error or "pip install tensorrt-rtx" in error, error


def test_psvit_import_is_lazy():
    proc = _python("import sys, psvit; psvit.list_models(); print('torch' in sys.modules);"
                   "psvit.load_checkpoint; print('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]
