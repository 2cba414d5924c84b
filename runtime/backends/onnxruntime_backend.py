"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers; IO binding on the GPU. The one place
that creates ONNX Runtime sessions (export verification, calibration reports and FP16 range checks run
their graphs through it too, from files or from serialized bytes).

Concurrency: ``InferenceSession.run`` is thread-safe, so CPU calls run concurrently; :meth:`arun` uses
ONNX Runtime's own ``run_async`` there. GPU calls go through IO binding with preallocated device buffers per
batch size; those buffers are shared, so a lock serialises GPU calls (one Runtime per stream for parallel
GPU work).
"""
from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import MissingDependencyError, require
from ...metadata import decode_metadata
from ..batching import BatchLimits
from ..errors import ArtifactError, BackendError
from .base import Backend, Concurrency, Outputs, Timings, timed

ProviderSpec = str | tuple[str, dict[str, Any]]
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider")
_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _provider_name(p: ProviderSpec) -> str:
    return p if isinstance(p, str) else p[0]


def resolve_providers(providers: list[ProviderSpec] | None, device: str | None, cuda_graphs: bool) -> list[ProviderSpec]:
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
    if cuda_graphs:
        out = [("CUDAExecutionProvider", {**(p[1] if isinstance(p, tuple) else {}), "enable_cuda_graph": "1"})
               if _provider_name(p) == "CUDAExecutionProvider" else p for p in out]
    if "CPUExecutionProvider" not in [_provider_name(p) for p in out]:
        out.append("CPUExecutionProvider")
    return out


@dataclass(frozen=True)
class GraphInput:
    """The one input of a graph: (N, C, H, W) for image classifiers, (N, ...) with fixed trailing dims."""

    name: str
    static_batch: int | None
    shape: tuple[int, ...]  # without the batch: (C, H, W) for image classifiers
    dtype: type


def open_session(ort: Any, source: str | bytes, options: Any, providers: list[Any], label: str,
                 image_input: bool = True) -> tuple[Any, GraphInput]:
    """An ORT session for ``source`` (a path or serialized bytes) whose graph has one batched input, an
    image (N, C, H, W) unless ``image_input`` is False. Load failures raise :class:`ArtifactError`."""
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # ORT raises InvalidProtobuf/Fail/NoSuchFile... of its own
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(
            f"ONNX Runtime cannot load {label} ({first}). The file may be truncated or not an ONNX model; "
            f"re-export it with `psvit-export onnx`"
        ) from exc
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) < 2 or (image_input and len(inputs[0].shape) != 4):
        raise ArtifactError(f"{label} is not an image classifier graph (one (N, C, H, W) input expected)")
    inp = inputs[0]
    if not all(isinstance(d, int) for d in inp.shape[1:]):
        raise ArtifactError(f"{label} has a dynamic image size {inp.shape}; export it with a fixed one")
    return session, GraphInput(
        name=inp.name,
        static_batch=inp.shape[0] if isinstance(inp.shape[0], int) else None,
        shape=tuple(int(d) for d in inp.shape[1:]),
        dtype=np.float16 if inp.type == "tensor(float16)" else np.float32,
    )


class OnnxRuntimeBackend(Backend):
    """An ONNX graph on ONNX Runtime: a file, or serialized bytes (``name`` then labels it).

    Options: ``providers`` (names, aliases or ``(name, options)`` pairs; default CPU, or CUDA for
    ``device="cuda"``), ``threads`` (intra-op threads), ``spinning`` (False: intra-op threads sleep instead
    of spin-waiting between operators, which leaves the cores to other work such as loader processes;
    None: ORT's default, spinning), ``profiling`` (ORT's per-node profiler; see
    :meth:`layer_profile`), ``cuda_graphs`` (CUDA EP ``enable_cuda_graph``: one graph per batch size),
    ``image_input`` (False accepts any one batched input with fixed trailing dims). Every graph output is
    returned, a dict when there are several.
    """

    name = "onnxruntime"

    def __init__(
        self,
        source: str | os.PathLike | bytes,
        *,
        device: str | None = None,
        providers: list[ProviderSpec] | None = None,
        threads: int | None = None,
        spinning: bool | None = None,
        profiling: bool = False,
        cuda_graphs: bool = False,
        optimized_model_path: str | os.PathLike | None = None,
        log_severity: int = 3,
        name: str | None = None,
        image_input: bool = True,
    ) -> None:
        ort = require("onnxruntime", "onnxruntime", "running ONNX models (GPU: pip install onnxruntime-gpu)")
        in_memory = isinstance(source, (bytes, bytearray))
        path = None if in_memory else Path(source)
        label = name or (str(path) if path is not None else "ONNX model (in memory)")
        if path is not None and not path.is_file():
            raise ArtifactError(f"ONNX file {path} does not exist; check the path, or export one with "
                                f"`psvit-export onnx`")
        if cuda_graphs and not (device or "").startswith("cuda"):
            raise BackendError("cuda_graphs with ONNX Runtime need the CUDA provider: pass device='cuda' (and "
                               "install onnxruntime-gpu) or drop cuda_graphs")
        wanted = resolve_providers(providers, device, cuda_graphs)
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
        if spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if profiling:
            stem = path.stem if path is not None else "in_memory"
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"psvit_ort_{stem}")
        if optimized_model_path is not None:
            opts.optimized_model_filepath = str(optimized_model_path)
        self.session, inp = open_session(ort, bytes(source) if in_memory else str(path), opts, wanted, label,
                                         image_input=image_input)
        self.ort = ort
        self.path = path
        self.input_name = inp.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_shape = inp.shape  # type: ignore[assignment]
        self.input_dtype = inp.dtype
        self.limits = BatchLimits(static=inp.static_batch)
        meta = decode_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        self.metadata = meta
        self.class_names = meta.get("psvit.class_names") or None
        self.preprocess = meta.get("psvit.preprocess") or None
        self._source = source if in_memory else None
        self._precision: str | None = None  # read from the graph on first use (needs onnx)
        self.providers = self.session.get_providers()
        self.gpu = self.providers[0] in GPU_PROVIDERS
        self.device = (device or "cuda:0") if self.gpu else "cpu"
        if self.device == "cuda":
            self.device = "cuda:0"
        self.cuda_graphs = cuda_graphs
        self.profiling = profiling
        where = self.providers[0].removesuffix("ExecutionProvider")
        self.description = f"{name or (path.name if path is not None else label)} (onnxruntime {where})"
        self.concurrency = (Concurrency(thread_safe=True, max_parallel=1, mechanism="lock") if self.gpu
                            else Concurrency(thread_safe=True, max_parallel=None, mechanism="none"))
        self._lock = threading.Lock()
        self._bindings: dict[int, tuple[Any, Any, Any, Any]] = {}  # batch -> (binding, in, outs, run options)
        self._profile: dict[str, dict[str, float]] | None = None
        self._runs = 0

    @property
    def precision(self) -> str:
        """The graph's own precision (Q/DQ nodes: int8, FP16 types: fp16), not what its metadata says; read
        on first use (with onnx; without it, the metadata's ``psvit.precision``)."""
        if self._precision is None:
            declared = str(self.metadata.get("psvit.precision") or "fp32")
            try:
                import onnx
            except ImportError:
                return declared
            from ..onnx_graph import graph_precision

            model = (onnx.load_from_string(bytes(self._source)) if self._source is not None
                     else onnx.load(str(self.path), load_external_data=False))
            self._precision = graph_precision(model)
        return self._precision

    # ---- GPU path: IO binding ----------------------------------------------------------------------
    def _binding(self, n: int) -> tuple[Any, Any, Any, Any]:
        """IO binding with device buffers for batch ``n``, created once (CUDA graphs need fixed addresses)."""
        if n not in self._bindings:
            ort = self.ort
            dev_id = int(self.device.split(":")[1]) if ":" in self.device else 0
            x = ort.OrtValue.ortvalue_from_shape_and_type([n, *self.input_shape], self.input_dtype, "cuda", dev_id)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, x)
            outs = []
            for o in self.session.get_outputs():
                dtype = np.float16 if o.type == "tensor(float16)" else np.float32
                y = ort.OrtValue.ortvalue_from_shape_and_type([n, *o.shape[1:]], dtype, "cuda", dev_id)
                binding.bind_ortvalue_output(o.name, y)
                outs.append(y)
            run_options = ort.RunOptions()
            if self.cuda_graphs:  # one captured graph per batch size
                run_options.add_run_config_entry("gpu_graph_id", str(len(self._bindings) + 1))
            self._bindings[n] = (binding, x, outs, run_options)
        return self._bindings[n]

    def _run_bound(self, x: np.ndarray, timings: Timings | None) -> list[np.ndarray]:
        with self._lock:
            binding, dev_in, _, opts = self._binding(len(x))
            timed(timings, "h2d", lambda: dev_in.update_inplace(np.ascontiguousarray(x, self.input_dtype)))
            timed(timings, "compute", lambda: self.session.run_with_iobinding(binding, opts))
            return timed(timings, "d2h", lambda: binding.copy_outputs_to_cpu())

    def _outputs(self, outs: list[np.ndarray]) -> Outputs:
        outs = [o if o.dtype == np.float32 else np.asarray(o).astype(np.float32) for o in outs]
        return outs[0] if len(outs) == 1 else dict(zip(self.output_names, outs))

    def _feed(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: x if x.dtype == self.input_dtype else x.astype(self.input_dtype)}

    # ---- Backend -----------------------------------------------------------------------------------
    def run(self, x: np.ndarray, timings: Timings | None = None) -> Outputs:
        self._runs += 1
        if self.gpu:
            return self._outputs(self._run_bound(x, timings))
        feed = self._feed(x)
        if timings is None:  # the hot path
            return self._outputs(self.session.run(self.output_names, feed))
        return self._outputs(timed(timings, "compute", lambda: self.session.run(self.output_names, feed)))

    async def arun(self, x: np.ndarray) -> Outputs:
        """ONNX Runtime's own ``run_async`` on the CPU (its thread pool; no Python thread per call)."""
        if self.gpu or not hasattr(self.session, "run_async"):
            return await super().arun(x)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def callback(results: list[Any], _user: Any, err: str) -> None:  # runs in ORT's thread
            def settle() -> None:
                if done.cancelled():
                    return
                if err:
                    done.set_exception(BackendError(f"{self.description}: {err}"))
                else:
                    done.set_result([np.asarray(r) for r in results])

            loop.call_soon_threadsafe(settle)

        self._runs += 1
        self.session.run_async(self.output_names, self._feed(x), callback, None)
        return self._outputs(await done)

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
