"""``write_repository``: a Triton model repository from ONNX files and engines.

For each artifact (model ``NAME``)::

    REPO/NAME/config.pbtxt            onnxruntime backend (.onnx) or tensorrt_plan platform (engine)
    REPO/NAME/1/model.onnx|model.plan the artifact, byte for byte
    REPO/NAME/labels.txt              class names (label_filename: Triton's classification extension)
    REPO/NAME/provenance.json         the artifact's metadata or sidecar, its sha256, who wrote the repository
    REPO/NAME_preprocess/             Python backend: PNG/JPEG bytes -> input tensor (the recorded preprocessing)
    REPO/NAME_postprocess/            Python backend: logits -> top-k labels, probabilities, indices
    REPO/NAME_image/config.pbtxt      ensemble of the three: a client sends file bytes, gets top-k labels

Each model folder is written in a temporary folder beside REPO and renamed into place, so Triton (which may
poll REPO) never sees a half-written model; existing model folders are replaced only with ``force``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..provenance import check_output_folder, package_versions, sha256_file
from . import pbtxt
from .errors import ServeError, check_at_least
from .facts import ModelFacts, read_facts

FORMAT = "psvit-triton/1"
DEFAULT_NAME = "psvit"
DEFAULT_MAX_BATCH = 32  # for ONNX with a dynamic batch; engines default to their profile's max
DEFAULT_TOPK = 5
# The psvit modules the Python-backend models import; they and the psvit modules they import at module level
# (followed through relative imports) are copied verbatim as the package ``psvit_vendored``.
VENDORED_ROOTS = ("psvit.preprocessing", "psvit.runtime.predict")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class RepositoryModel:
    """One artifact's models in the repository."""

    name: str
    artifact: Path
    facts: ModelFacts
    folders: dict[str, Path]  # role ("model", "preprocess", "postprocess", "image") -> folder
    max_batch: int


@dataclass
class Repository:
    path: Path
    models: list[RepositoryModel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def model_names(artifacts: Sequence[str | os.PathLike], name: str | None) -> list[str]:
    """``name`` (default ``psvit``) for one artifact; ``NAME_STEM`` per artifact for several (``NAME_STEM_SUFFIX``
    where stems repeat, e.g. ``demo.onnx`` and ``demo.engine``)."""
    base = name or DEFAULT_NAME
    if not _NAME.match(base):
        raise ServeError(f"--name {base!r}: use letters, digits, '.', '_' and '-' (Triton's model names)")
    if len(artifacts) == 1:
        return [base]

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]+", "_", text)

    names = [f"{base}_{clean(Path(a).stem)}" for a in artifacts]
    if len(set(names)) != len(names):
        names = [f"{n}_{clean(Path(a).suffix.lstrip('.'))}" for n, a in zip(names, artifacts)]
    if len(set(names)) != len(names):
        raise ServeError(f"artifacts {', '.join(map(str, artifacts))} give the same model names {names}; rename "
                         f"the files or write one repository per artifact with --name")
    return names


def resolve_max_batch(facts: ModelFacts, requested: int | None) -> int:
    """The model's ``max_batch_size``: the engine profile's max (or ``requested`` below it); 32 for ONNX."""
    if facts.static_batch is not None:
        raise ServeError(
            f"{facts.path.name} has a fixed batch of {facts.static_batch}; Triton's dynamic batching needs a batch "
            f"axis it can fill, so re-export with a dynamic batch (`psvit-export onnx ... --batch dynamic`"
            + (", then `psvit-export trt` with --batch 1:OPT:MAX)" if facts.kind == "engine" else ")")
        )
    if facts.min_batch > 1:
        raise ServeError(f"{facts.path.name}'s profile starts at batch {facts.min_batch}; Triton sends batches from "
                         f"1 up, so rebuild it with `psvit-export trt --batch 1:OPT:MAX`")
    limit = facts.max_batch
    if requested is None:
        return limit or DEFAULT_MAX_BATCH
    check_at_least([("--max-batch", requested, 1)])
    check_within_profile(requested, limit)
    return requested


def check_within_profile(requested: int | None, limit: int | None) -> None:
    """Refuse a ``--max-batch`` above an engine profile's max batch (``limit``; None: no limit)."""
    if requested is not None and limit is not None and requested > limit:
        raise ServeError(f"--max-batch {requested} exceeds the engine profile's max batch {limit}; use at most "
                         f"{limit} or rebuild the engine with a larger --batch range")


def _engine_notes(facts: ModelFacts) -> list[str]:
    sidecar = facts.provenance.get("sidecar", {})
    version = sidecar.get("version", "?")
    if facts.flavour == "tensorrt_rtx":
        return [f"{facts.path.name} is a TensorRT-RTX {version} plan: Triton's tensorrt_plan backend runs plans of "
                f"its own TensorRT, so stock Triton will not load it; build with `psvit-export trt --builder "
                f"tensorrt` in the Triton release's container for a stock server"]
    targets = sidecar.get("target", {}).get("compute_capabilities", [])
    capability = sidecar.get("compute_capability") or ", ".join(targets)
    return [f"{facts.path.name} was built with TensorRT {version}: use the Triton release whose TensorRT is "
            f"{version} (plans load only in the TensorRT version that built them) on a GPU of compute capability "
            f"{capability}"]


def _module_source(module: str) -> str:
    package, _, name = module.rpartition(".")
    return resources.files(package).joinpath(f"{name}.py").read_text()


def vendored_modules(roots: Sequence[str] = VENDORED_ROOTS) -> list[str]:
    """``roots`` and every psvit module they import at module level through relative imports, transitively."""
    import ast

    seen: list[str] = []
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.append(module)
        package = module.rpartition(".")[0].split(".")
        for node in ast.parse(_module_source(module)).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - node.level + 1]
                if node.module:
                    todo.append(".".join([*base, node.module]))
                else:
                    todo.extend(".".join([*base, alias.name]) for alias in node.names)
    return sorted(seen)


def _write_vendored(version_dir: Path) -> None:
    """Copy :func:`vendored_modules` into ``version_dir/psvit_vendored`` (``psvit.x.y`` -> ``psvit_vendored/x/y.py``)."""
    target = version_dir / "psvit_vendored"
    for module in vendored_modules():
        dst = target.joinpath(*module.split(".")[1:]).with_suffix(".py")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(_module_source(module))
    for pkg in [target, *(d for d in target.rglob("*") if d.is_dir())]:
        (pkg / "__init__.py").write_text('"""Copied from psvit-deploy by psvit-export triton; do not edit."""\n')


def _write_python_model(folder: Path, template: str, cfg: Any) -> None:
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(pbtxt.render(cfg))
    (folder / "1" / "model.py").write_text(resources.files("psvit.serve.python_backend").joinpath(template).read_text())
    _write_vendored(folder / "1")


def _provenance(facts: ModelFacts, artifact: Path, command: str | None) -> dict[str, Any]:
    return {
        "format": FORMAT, "artifact": str(artifact.resolve()), "artifact_sha256": sha256_file(artifact),
        "kind": facts.kind, "flavour": facts.flavour, "precision": facts.precision,
        "input": vars(facts.input), "output": vars(facts.output), "class_names": facts.class_names,
        "preprocess": facts.preprocess, "notes": facts.notes, "command": command,
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions("tritonclient", "nvidia-pytriton", "onnx"), **facts.provenance,
    }


def write_repository(
    artifacts: Sequence[str | os.PathLike],
    repo: str | os.PathLike,
    *,
    name: str | None = None,
    max_batch: int | None = None,
    max_queue_delay_us: int = 1000,
    instances: int = 1,
    preferred_batch: Sequence[int] = (),
    kind: str = "auto",
    topk: int = DEFAULT_TOPK,
    image_models: bool = True,
    force: bool = False,
    command: str | None = None,
) -> Repository:
    """Write (or add to) the Triton model repository ``repo``; see the module docstring.

    Args:
        max_batch: ``max_batch_size`` (None: the engine profile's max, 32 for ONNX).
        max_queue_delay_us, preferred_batch, instances: dynamic batching and the instance group of each model.
        kind: ``auto`` (GPU for engines, CPU for ONNX), ``cpu`` or ``gpu`` instances of the main model.
        image_models: also write the preprocess/postprocess models and the ``NAME_image`` ensemble.
        force: replace model folders that already exist.
    """
    if not artifacts:
        raise ServeError("give at least one artifact (.onnx or engine)")
    check_at_least([("--topk", topk, 1)])
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise ServeError(f"--repo {repo} is a file; give a folder (it is created if missing)")
    check_output_folder(repo)
    names = model_names(artifacts, name)
    # Everything is read and checked before anything is written.
    plans: list[tuple[str, Path, ModelFacts, pbtxt.Batching]] = []
    for model_name, artifact in zip(names, artifacts):
        facts = read_facts(artifact)
        batching = pbtxt.Batching(resolve_max_batch(facts, max_batch), max_queue_delay_us, tuple(preferred_batch),
                                  instances)
        batching.check()
        if image_models and not facts.preprocess:
            raise ServeError(f"{artifact} records no preprocessing, so no image model can be made for it; "
                             f"re-export it with `psvit-export onnx`, or pass --no-image-models")
        plans.append((model_name, Path(artifact), facts, batching))
    roles = ("model", "preprocess", "postprocess", "image") if image_models else ("model",)
    folder_names = {n: {r: n if r == "model" else f"{n}_{r}" for r in roles} for n in names}
    existing = [repo / f for d in folder_names.values() for f in d.values() if (repo / f).exists()]
    if existing and not force:
        raise ServeError(f"{', '.join(map(str, existing))} already exist(s) in the repository; pass --force to "
                         f"replace them")
    repo.mkdir(exist_ok=True)
    result = Repository(path=repo)
    with tempfile.TemporaryDirectory(prefix=f".{repo.name}.", dir=repo.parent) as tmp_dir:
        staged: list[tuple[Path, Path]] = []
        for model_name, artifact, facts, batching in plans:
            folders = folder_names[model_name]
            mb = batching.max_batch
            k = min(topk, facts.num_classes)
            stage = Path(tmp_dir) / model_name
            main = stage / folders["model"]
            (main / "1").mkdir(parents=True)
            shutil.copyfile(artifact, main / "1" / ("model.plan" if facts.kind == "engine" else "model.onnx"))
            (main / "config.pbtxt").write_text(pbtxt.render(pbtxt.model_config(model_name, facts, batching, kind)))
            if facts.class_names:
                (main / pbtxt.LABELS_FILE).write_text("".join(n.replace("\n", " ") + "\n" for n in facts.class_names))
            (main / "provenance.json").write_text(json.dumps(_provenance(facts, artifact, command), indent=2,
                                                             default=str) + "\n")
            if image_models:
                _write_python_model(stage / folders["preprocess"], "preprocess.py",
                                    pbtxt.preprocess_config(folders["preprocess"], facts, batching))
                _write_python_model(stage / folders["postprocess"], "postprocess.py",
                                    pbtxt.postprocess_config(folders["postprocess"], facts, batching, k))
                ens = stage / folders["image"]
                (ens / "1").mkdir(parents=True)  # an ensemble needs a version folder, even an empty one
                (ens / "config.pbtxt").write_text(pbtxt.render(pbtxt.ensemble_config(
                    folders["image"], model_name, folders["preprocess"], folders["postprocess"], facts, mb, k)))
            for folder in folders.values():
                pbtxt.parse(stage / folder / "config.pbtxt")  # reads back: a malformed file fails here
                staged.append((stage / folder, repo / folder))
            result.models.append(RepositoryModel(model_name, artifact, facts,
                                                 {r: repo / f for r, f in folders.items()}, mb))
            result.notes.extend(facts.notes + (_engine_notes(facts) if facts.kind == "engine" else []))
        for src, dst in staged:
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(src, dst)
    return result
