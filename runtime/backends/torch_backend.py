"""PyTorch backend: a checkpoint, ``"demo"``, a variant name (random weights) or an already-loaded model
(export verification and the demo hand theirs over, so no checkpoint is read twice); eager or CUDA graphs.

Concurrency: on the CPU, forward passes run concurrently (inference mode, no shared buffers). On a GPU
all calls share one CUDA stream and, with CUDA graphs, static input/output buffers, so a lock serialises
them; load one Runtime per stream for parallel GPU work.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ...artifacts import ArtifactKind, detect_artifact
from ...errors import PSViTError
from ..batching import BatchLimits
from ..errors import ArtifactError, BackendError
from .base import Backend, Concurrency, Timings, timed

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _load_model(source: str, *, variant: str | None, seed: int, fused_attention: bool | None) -> tuple[Any, Any, dict]:
    """(model, config, facts) from a checkpoint path, ``"demo"`` or a registered variant name."""
    import psvit

    options = {} if fused_attention is None else {"fused_attention": fused_attention}
    text = str(source)
    if detect_artifact(text).kind is ArtifactKind.VARIANT:
        import torch

        with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
            torch.manual_seed(seed)
            model = psvit.create_model(text, **options).eval()
        return model, model.cfg, {"description": f"{text} (random weights, seed {seed})", "class_names": None,
                                  "random_weights": True, "sha256": None}
    try:
        ckpt = psvit.load_checkpoint(source, variant=variant, **options)
    except PSViTError as exc:
        raise ArtifactError(str(exc)) from exc
    return ckpt.model, ckpt.config, {"description": str(ckpt.path.name if text != "demo" else "demo"),
                                     "class_names": ckpt.class_names, "random_weights": False,
                                     "sha256": ckpt.sha256, "metadata": ckpt.metadata}


def _given_model(model: Any, name: str | None, class_names: list[str] | None,
                 metadata: dict[str, Any] | None) -> tuple[Any, Any, dict]:
    """(model, config, facts) of a model object the caller already holds."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise BackendError(f"the PyTorch backend runs PSViT models (with a .cfg); got {type(model).__name__}")
    meta = dict(metadata or {})
    return model, cfg, {"description": name or f"{getattr(model, 'variant', None) or 'model'} (in memory)",
                        "class_names": class_names, "random_weights": bool(meta.get("random_weights")),
                        "sha256": meta.get("sha256"), "metadata": meta}


class TorchBackend(Backend):
    """A PSViT in eval mode on ``device`` in ``precision``; ``cuda_graphs`` captures one graph per batch size.

    ``source`` is a checkpoint path, ``"demo"``, a variant name or a model object (``name``,
    ``class_names`` and ``metadata`` describe a model object; it is used as it is, not copied).
    """

    name = "torch"

    def __init__(
        self,
        source: Any,
        *,
        device: str | None = None,
        precision: str = "fp32",
        cuda_graphs: bool = False,
        variant: str | None = None,
        seed: int = 0,
        fused_attention: bool | None = None,
        threads: int | None = None,
        name: str | None = None,
        class_names: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        import torch

        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r} for PyTorch; use one of {', '.join(PRECISIONS)}")
        dev = torch.device(device or "cpu")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("device 'cuda' requested but PyTorch sees no CUDA GPU; use device='cpu'")
        if dev.type == "cpu" and (cuda_graphs or precision == "fp16"):
            what = "CUDA graphs" if cuda_graphs else "FP16"
            raise BackendError(f"{what} with PyTorch need a CUDA device; pass device='cuda' or drop the option")
        if threads:
            torch.set_num_threads(threads)
        if isinstance(source, torch.nn.Module):
            model, cfg, facts = _given_model(source, name, class_names, metadata)
        else:
            model, cfg, facts = _load_model(source, variant=variant, seed=seed, fused_attention=fused_attention)
        self.dtype = getattr(torch, PRECISIONS[precision])
        self.model = model.to(device=dev, dtype=self.dtype).eval()
        self.torch_device = dev
        self.device = str(dev)
        self.precision = precision
        self.cuda_graphs = cuda_graphs
        self.description = f"{facts['description']} (torch {'cuda graphs' if cuda_graphs else 'eager'} {self.device})"
        self.input_shape = (cfg.in_chans, cfg.img_size, cfg.img_size)
        self.limits = BatchLimits()
        self.class_names = facts["class_names"]
        self.preprocess = cfg.preprocess
        self.metadata = {"random_weights": facts["random_weights"], "sha256": facts["sha256"],
                         "variant": getattr(model, "variant", None), **(facts.get("metadata") or {})}
        self.concurrency = (Concurrency(thread_safe=True, max_parallel=None, mechanism="none") if dev.type == "cpu"
                            else Concurrency(thread_safe=True, max_parallel=1, mechanism="lock"))
        self._lock = threading.Lock() if dev.type == "cuda" else None
        self._stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        self._graphs: dict[int, tuple[Any, Any, Any]] = {}  # batch -> (graph, static input, static output)

    # ---- helpers ---------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()

    def _graph(self, n: int) -> tuple[Any, Any, Any]:
        """The CUDA graph of batch ``n``, captured on first use (after warm-up on a side stream)."""
        import torch

        if n not in self._graphs:
            static_in = torch.zeros((n, *self.input_shape), device=self.torch_device, dtype=self.dtype)
            with torch.inference_mode():
                side = torch.cuda.Stream(self.torch_device)
                side.wait_stream(torch.cuda.current_stream(self.torch_device))
                with torch.cuda.stream(side):
                    for _ in range(3):
                        self.model(static_in)
                torch.cuda.current_stream(self.torch_device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self._stream):
                    static_out = self.model(static_in)
            self._graphs[n] = (graph, static_in, static_out)
        return self._graphs[n]

    def _forward(self, x: Any) -> Any:
        """Logits of a device tensor in the model dtype; on the backend's stream."""
        import torch

        if self.cuda_graphs:
            graph, static_in, static_out = self._graph(len(x))
            static_in.copy_(x)
            graph.replay()
            return static_out.clone()
        with torch.inference_mode():
            return self.model(x)

    # ---- Backend ---------------------------------------------------------------------------------
    def run(self, x: np.ndarray, timings: Timings | None = None) -> np.ndarray:
        import torch

        if self._lock is None:  # CPU: no copies, no shared state
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            out = timed(timings, "compute", lambda: self._forward(t))
            return out.float().numpy()
        with self._lock, torch.cuda.stream(self._stream):
            t = timed(timings, "h2d", lambda: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                      .to(self.torch_device, self.dtype, non_blocking=False), self._sync)
            out = timed(timings, "compute", lambda: self._forward(t), self._sync)
            return timed(timings, "d2h", lambda: out.float().cpu().numpy(), self._sync)

    def run_tensor(self, x: Any) -> Any:
        import torch

        if self._lock is None:
            return self._forward(x.to(self.torch_device, self.dtype)).float().to(x.device)
        with self._lock, torch.cuda.stream(self._stream):
            out = self._forward(x.to(self.torch_device, self.dtype)).float()
            self._sync()
            return out.to(x.device)
