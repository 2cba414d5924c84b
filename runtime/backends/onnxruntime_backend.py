"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers; IO binding on the GPU.

Thread safety: ``InferenceSession.run`` is thread-safe, so CPU calls run concurrently. GPU calls go
through IO binding with preallocated device buffers per batch size; those buffers are shared, so a lock
serialises GPU calls (one Runtime per stream for parallel GPU work).
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import MissingDependencyError, require
from ..batching import BatchLimits
from ..errors import ArtifactError
from .base import Backend, Timings, timed

ProviderSpec = str | tuple[str, dict[str, Any]]
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider")
_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _provider_name(p: ProviderSpec) -> str:
    return p if isinstance(p, str) else p[0]


def resolve_providers(providers: list[ProviderSpec] | None, device: str | None, cuda_graph: bool) -> list[ProviderSpec]:
    """Full provider list: aliases expanded (``cpu``, ``cuda``, ``tensorrt``), CPU appended as fallback."""
    if providers is None:
        providers = ["cuda"] if (device or "cpu").startswith("cuda") else ["cpu"]
    dev_id = (device or "").partition(":")[2]
    out: list[ProviderSpec] = []
    for p in providers:
        if isinstance(p, str):
            p = _ALIASES.get(p.lower(), p)
            if dev_id and p in GPU_PROVIDERS:  # "cuda:N" selects the GPU
                p = (p, {"device_id": dev_id})
        out.append(p)
    if cuda_graph:
        out = [("CUDAExecutionProvider", {**(p[1] if isinstance(p, tuple) else {}), "enable_cuda_graph": "1"})
               if _provider_name(p) == "CUDAExecutionProvider" else p for p in out]
    if "CPUExecutionProvider" not in [_provider_name(p) for p in out]:
        out.append("CPUExecutionProvider")
    return out


@dataclass(frozen=True)
class ClassifierInput:
    """The one (N, C, H, W) input of an image-classifier graph."""

    name: str
    static_batch: int | None
    shape: tuple[int, int, int]  # (C, H, W)
    dtype: type


def open_classifier_session(
    ort: Any, source: str | bytes, options: Any, providers: list[Any], label: str,
    error: type[Exception] = ArtifactError,
) -> tuple[Any, ClassifierInput]:
    """An ORT session for ``source`` (a path or serialized bytes) whose graph must be an image classifier.

    Load failures and graphs of another form raise ``error`` naming ``label``.
    """
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # ORT raises InvalidProtobuf/Fail/NoSuchFile... of its own
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(
            f"ONNX Runtime cannot load {label} ({first}). The file may be truncated or not an ONNX model; "
            f"re-export it with `psvit-export onnx`"
        ) from exc
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise error(f"{label} is not an image classifier graph (one (N, C, H, W) input expected)")
    inp = inputs[0]
    if not all(isinstance(d, int) for d in inp.shape[1:]):
        raise error(f"{label} has a dynamic image size {inp.shape}; export it with a fixed one")
    return session, ClassifierInput(
        name=inp.name,
        static_batch=inp.shape[0] if isinstance(inp.shape[0], int) else None,
        shape=tuple(int(d) for d in inp.shape[1:]),  # type: ignore[arg-type]
        dtype=np.float16 if inp.type == "tensor(float16)" else np.float32,
    )


def _decode(meta: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            out[key] = value
    return out


class OnnxRuntimeBackend(Backend):
    """An ONNX image classifier on ONNX Runtime.

    Options: ``providers`` (names, aliases or ``(name, options)`` pairs; default CPU, or CUDA for
    ``device="cuda"``), ``threads`` (intra-op threads), ``profiling`` (ORT's per-node profiler; see
    :meth:`layer_profile`), ``cuda_graph`` (CUDA EP ``enable_cuda_graph``: one graph per batch size).
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str | None = None,
        providers: list[ProviderSpec] | None = None,
        threads: int | None = None,
        profiling: bool = False,
        cuda_graph: bool = False,
        optimized_model_path: str | os.PathLike | None = None,
        log_severity: int = 3,
    ) -> None:
        ort = require("onnxruntime", "onnxruntime", "running ONNX models (GPU: pip install onnxruntime-gpu)")
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"ONNX file {path} does not exist; check the path, or export one with "
                                f"`psvit-export onnx`")
        wanted = resolve_providers(providers, device, cuda_graph)
        available = ort.get_available_providers()
        missing = [_provider_name(p) for p in wanted if _provider_name(p) not in available]
        if missing:
            gpu = any(m in GPU_PROVIDERS for m in missing)
            raise MissingDependencyError(
                f"ONNX Runtime {ort.__version__} here has no {', '.join(missing)} (available: "
                f"{', '.join(available)})." + (" Install the GPU build: pip uninstall onnxruntime && pip install "
                                               "onnxruntime-gpu" if gpu else "")
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = log_severity
        if threads:
            opts.intra_op_num_threads = threads
        if profiling:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"psvit_ort_{path.stem}")
        if optimized_model_path is not None:
            opts.optimized_model_filepath = str(optimized_model_path)
        self.session, inp = open_classifier_session(ort, str(path), opts, wanted, str(path))
        self.ort = ort
        self.path = path
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self._outputs = [self.output_name]
        self.input_shape = inp.shape  # type: ignore[assignment]
        self.input_dtype = inp.dtype
        self.limits = BatchLimits(static=inp.static_batch)
        meta = _decode(dict(self.session.get_modelmeta().custom_metadata_map))
        self.metadata = meta
        self.class_names = meta.get("psvit.class_names") or None
        self.preprocess = meta.get("psvit.preprocess") or None
        self.precision = str(meta.get("psvit.precision") or "fp32")
        self.providers = self.session.get_providers()
        self.gpu = self.providers[0] in GPU_PROVIDERS
        self.device = (device or "cuda:0") if self.gpu else "cpu"
        if self.device == "cuda":
            self.device = "cuda:0"
        self.cuda_graph = cuda_graph
        self.profiling = profiling
        self.description = f"{path.name} (onnxruntime {self.providers[0].removesuffix('ExecutionProvider')})"
        self.thread_safety = ("calls are serialised by a lock (IO binding, shared device buffers)" if self.gpu
                              else "concurrent calls run in parallel (InferenceSession.run is thread-safe)")
        self._lock = threading.Lock()
        self._bindings: dict[int, tuple[Any, Any, Any, Any]] = {}  # batch -> (binding, in, out, run options)
        self._profile: dict[str, dict[str, float]] | None = None
        self._runs = 0

    # ---- GPU path: IO binding ----------------------------------------------------------------------
    def _binding(self, n: int) -> tuple[Any, Any, Any, Any]:
        """IO binding with device buffers for batch ``n``, created once (CUDA graphs need fixed addresses)."""
        if n not in self._bindings:
            ort = self.ort
            dev_id = int(self.device.split(":")[1]) if ":" in self.device else 0
            out_shape = [n, *self.session.get_outputs()[0].shape[1:]]
            out_dtype = np.float16 if self.session.get_outputs()[0].type == "tensor(float16)" else np.float32
            x = ort.OrtValue.ortvalue_from_shape_and_type([n, *self.input_shape], self.input_dtype, "cuda", dev_id)
            y = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, out_dtype, "cuda", dev_id)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, x)
            binding.bind_ortvalue_output(self.output_name, y)
            run_options = ort.RunOptions()
            if self.cuda_graph:  # one captured graph per batch size
                run_options.add_run_config_entry("gpu_graph_id", str(len(self._bindings) + 1))
            self._bindings[n] = (binding, x, y, run_options)
        return self._bindings[n]

    def _run_bound(self, x: np.ndarray, timings: Timings | None) -> np.ndarray:
        with self._lock:
            binding, dev_in, _, opts = self._binding(len(x))
            timed(timings, "h2d", lambda: dev_in.update_inplace(np.ascontiguousarray(x, self.input_dtype)))
            timed(timings, "compute", lambda: self.session.run_with_iobinding(binding, opts))
            return timed(timings, "d2h", lambda: binding.copy_outputs_to_cpu()[0])

    # ---- Backend -----------------------------------------------------------------------------------
    def run(self, x: np.ndarray, timings: Timings | None = None) -> np.ndarray:
        self._runs += 1
        if self.gpu:
            out = self._run_bound(x, timings)
        else:
            feed = {self.input_name: x if x.dtype == self.input_dtype else x.astype(self.input_dtype)}
            if timings is None:  # the hot path
                out = self.session.run(self._outputs, feed)[0]
            else:
                out = timed(timings, "compute", lambda: self.session.run(self._outputs, feed)[0])
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def layer_profile(self) -> dict[str, dict[str, float]] | None:
        """Per-op-type totals from ORT's profiler, the first call left out as warm-up when there were several
        (ends profiling; later calls return the same totals)."""
        if not self.profiling:
            return None
        if self._profile is None:
            from ..ort_profile import op_type_totals

            path = self.session.end_profiling()
            try:
                self._profile = op_type_totals(path, runs=self._runs, skip_runs=1 if self._runs > 1 else 0)
            finally:
                Path(path).unlink(missing_ok=True)
        return self._profile

    def close(self) -> None:
        if self.profiling and self._profile is None:
            self.layer_profile()
        self._bindings.clear()
