"""Scale-out on Ray Data: the predictions of :func:`predict_files`, computed by actors across a Ray cluster.

The driver lists the files (:func:`find_images`, so resuming works as in one process) and hands the paths
to Ray as a dataset (``ray.data.from_items``). Two ``map_batches`` stages follow: decoding and the
artifact's preprocessing (:func:`read_one`, the loader's own code; uint8 pixels, a quarter of float32 in
the object store) and inference in a pool of actors, each loading the artifact once
(:func:`psvit.runtime.load`) and running :func:`predict_batch`. Ray fuses the two stages into the actors
when they ask for the same resources (CPU-only: decoding then happens in the actor processes); with
``num_gpus`` per actor the decoding runs as separate CPU tasks anywhere in the cluster. Results stream
back to the driver, which writes them, so the output is the same file as without Ray.

Every node must see the files under the same path (a shared file system) and have this package installed
in the same environment. ``address="local"`` starts a small private cluster on this machine (bounded CPUs
and object store: ``/dev/shm`` is shared with everything else on the machine) and stops it at the end.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .api import artifact_kind
from .errors import BackendError
from .file_predict import (
    DEFAULT_BATCH, FileResult, ResultStream, check_run_settings, predict_batch, throughput_options, usable_cpus,
)
from .predict import Prediction

LOCAL = "local"
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2  # Ray's minimum is 75 MB; its default (30% of RAM) is far too big here
PIP_EXTRA = "'psvit-deploy[ray]'"


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide: ``address`` is ``local`` (start a private cluster here), ``auto`` (the cluster
    this node belongs to) or a Ray address (``ray://head:10001``, ``head:6379``).

    None means: ``actors`` one per GPU on a cluster with GPUs, else one per ``cpus_per_actor`` CPUs;
    ``gpus_per_actor`` 1 where the cluster has GPUs, else 0; ``local_cpus`` the CPUs this process may use.
    """

    address: str = LOCAL
    actors: int | None = None
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    local_cpus: int | None = None
    local_object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES


def require_ray() -> Any:
    """The ``ray`` module with Ray Data usable, or a MissingDependencyError naming the pip command."""
    from ..errors import require

    ray = require("ray", PIP_EXTRA, "--ray (Ray Data)")
    require("ray.data", PIP_EXTRA, "--ray (Ray Data needs pandas and pyarrow: ray[data])")
    return ray


def connect(settings: RaySettings) -> bool:
    """Join or start the cluster; True when this call started it (and the caller should shut it down)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if settings.address == LOCAL:
            cpus = settings.local_cpus or usable_cpus()
            ray.init(num_cpus=cpus, object_store_memory=settings.local_object_store_bytes, include_dashboard=False,
                     **quiet)
        else:
            ray.init(address=settings.address, **quiet)
    except (ConnectionError, TimeoutError, ValueError) as exc:
        raise BackendError(f"cannot reach the Ray cluster at {settings.address!r} ({exc}); --ray takes 'local', "
                           f"'auto' or a cluster address (start one with 'ray start --head')") from exc
    return True


def _quiet_ray_data(ray: Any) -> None:
    ray.data.DataContext.get_current().enable_progress_bars = False  # the caller shows its own progress
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"


def _decode(batch: dict[str, np.ndarray], preprocess: dict[str, Any]) -> dict[str, np.ndarray]:
    """Ray stage 1: files -> uint8 pixels (zeros for unreadable files, whose ``error`` says why)."""
    from ..preprocessing import Preprocess
    from .image_loader import read_one

    pre = Preprocess.from_dict(preprocess)
    s = pre.img_size
    n = len(batch["file"])
    pixels = np.zeros((n, 3, s, s), np.uint8)  # (B, C, H, W)
    errors, decode_s, preprocess_s = [], np.zeros(n), np.zeros(n)
    for i, file in enumerate(batch["file"]):
        px, err, decode_s[i], preprocess_s[i] = read_one(str(file), pre)
        if px is not None:
            pixels[i] = px
        errors.append(err or "")
    return {"path": batch["path"], "error": np.asarray(errors, dtype=object), "pixels": pixels,
            "decode_s": decode_s, "preprocess_s": preprocess_s}


class _Predictor:
    """Ray stage 2 (an actor): loads the artifact once, then predicts batch after batch."""

    def __init__(self, artifact: str, backend: str, device: str | None, options: dict[str, Any], topk: int) -> None:
        from .api import load
        from .predict import preprocessor

        self.runtime = load(artifact, backend, device, **options)
        self.preprocess = preprocessor(self.runtime.backend.preprocess, self.runtime.input_shape)
        self.topk = topk

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        ok = np.asarray([e == "" for e in batch["error"]], dtype=bool)
        items = [(str(p), None if e == "" else str(e)) for p, e in zip(batch["path"], batch["error"])]
        pixels = self.preprocess.normalize(batch["pixels"][ok])  # (B_ok, C, H, W) float32
        results = predict_batch(self.runtime, items, pixels, self.topk)
        n = len(items)
        return {"record": np.asarray([json.dumps(_to_json(r)) for r in results], dtype=object),
                "decode_s": batch["decode_s"], "preprocess_s": batch["preprocess_s"],
                "infer_s": np.full(n, (time.perf_counter() - t0) / max(n, 1))}


def _to_json(r: FileResult) -> dict[str, Any]:
    return {"path": r.path, "error": r.error, "top": [[p.index, p.name, p.probability] for p in r.predictions]}


def _from_json(text: str) -> FileResult:
    d = json.loads(text)
    return FileResult(d["path"], [Prediction(int(i), n, float(p)) for i, n, p in d["top"]], d["error"])


def _facts(artifact: str, backend: str, device: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """What the driver needs from the artifact, computed where the actors will run (the driver may have
    no GPU): the recorded preprocessing and the runtime's description."""
    from .api import load
    from .predict import preprocessor

    with load(artifact, backend, device, **options) as rt:
        preprocessor(rt.backend.preprocess, rt.input_shape)  # refuses an artifact without preprocessing
        return {"preprocess": dict(rt.backend.preprocess), "info": rt.info()}


class RayPredictionStream(ResultStream):
    """:class:`PredictionStream`'s results computed on Ray; they arrive in completion order, not input order."""

    def __init__(self, artifact: str | os.PathLike, paths: Sequence[str], *, topk: int = 5,
                 batch: int = DEFAULT_BATCH, backend: str = "auto", device: str | None = None,
                 options: dict[str, Any] | None = None, settings: RaySettings | None = None) -> None:
        check_run_settings(topk, batch)
        super().__init__(paths)
        self.artifact = str(artifact)
        self.topk, self.batch, self.backend, self.device = topk, batch, backend, device
        self.options = dict(options or {})
        self.settings = settings or RaySettings()
        self.info: dict[str, Any] = {}
        self.cluster: dict[str, Any] = {}
        self._started = False

    def _plan(self, ray: Any) -> tuple[int, float, float, dict[str, Any]]:
        """(actors, GPUs per actor, CPUs per actor, runtime options) for this cluster."""
        resources = ray.cluster_resources()
        s = self.settings
        gpus = s.gpus_per_actor if s.gpus_per_actor is not None else (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
        if gpus > resources.get("GPU", 0):
            raise BackendError(f"{gpus} GPU per actor asked, but the Ray cluster has {resources.get('GPU', 0):g}")
        if s.actors is not None:
            actors = s.actors
        elif gpus > 0:
            actors = max(1, int(resources["GPU"] // gpus))
        else:
            actors = max(1, int(resources.get("CPU", 1) // s.cpus_per_actor))
        if actors < 1:
            raise BackendError(f"the number of Ray actors must be at least 1, got {actors}")
        options = throughput_options(self.artifact, self.options)
        if gpus == 0 and "threads" not in options and artifact_kind(self.artifact) != "tensorrt":
            options["threads"] = max(1, int(s.cpus_per_actor))  # CPU actors share the node's cores
        return actors, gpus, s.cpus_per_actor, options

    def _run(self) -> Iterator[list[FileResult]]:
        ray = require_ray()
        from ray.data import ActorPoolStrategy

        start = time.perf_counter()
        self._started = connect(self.settings)
        try:
            actors, gpus, cpus, options = self._plan(ray)
            self.cluster = {"address": self.settings.address, "actors": actors, "gpus_per_actor": gpus,
                            "cpus_per_actor": cpus, "resources": dict(ray.cluster_resources())}
            probe = ray.remote(num_cpus=cpus, num_gpus=gpus)(_facts)
            facts = _unwrap(ray, lambda: ray.get(probe.remote(self.artifact, self.backend, self.device, options)))
            self.info = facts["info"]
            self.startup_s = time.perf_counter() - start  # joining the cluster, loading the artifact for its facts
            start = time.perf_counter()  # stats.wall_s: the pipeline alone
            _quiet_ray_data(ray)
            if not self.paths:
                return
            rows = [{"path": p, "file": os.path.abspath(p)} for p in self.paths]
            ds = ray.data.from_items(rows)
            ds = ds.map_batches(_decode, batch_size=self.batch, fn_kwargs={"preprocess": facts["preprocess"]},
                                batch_format="numpy")
            ds = ds.map_batches(_Predictor, batch_size=self.batch, batch_format="numpy",
                                fn_constructor_kwargs={"artifact": self.artifact, "backend": self.backend,
                                                       "device": self.device, "options": options,
                                                       "topk": self.topk},
                                compute=ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus or None)
            out = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
            stats = self.stats
            while True:
                t0 = time.perf_counter()
                b = _unwrap(ray, lambda: next(out, None))
                stats.wait_s += time.perf_counter() - t0
                if b is None:
                    break
                results = [_from_json(r) for r in b["record"]]
                stats.decode_s += float(np.sum(b["decode_s"]))
                stats.preprocess_s += float(np.sum(b["preprocess_s"]))
                stats.infer_s += float(np.sum(b["infer_s"]))
                self._count(results, start)
                yield results
        finally:
            if self._started:
                ray.shutdown()
                self._started = False

    def describe(self) -> dict[str, Any]:
        return {**self.info, "cluster": self.cluster}


def _unwrap(ray: Any, fn: Any) -> Any:
    """Run ``fn``; a user error raised inside a Ray task or actor comes back as itself (no Ray traceback)."""
    from ..errors import PSViTError

    try:
        return fn()
    except ray.exceptions.RayError as exc:
        cause = getattr(exc, "cause", None)
        while cause is not None and not isinstance(cause, PSViTError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if isinstance(cause, PSViTError):
            raise cause from None
        raise
