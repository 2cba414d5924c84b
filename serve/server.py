"""``serve``: the psvit runtime as a real Triton Inference Server (PyTriton) on this machine.

Two models, both with Triton's HTTP/gRPC APIs, health endpoints and Prometheus metrics:

- ``NAME``: ``images`` FP32 ``[-1, 3, H, W]`` -> ``logits`` FP32 ``[-1, classes]``, dynamic batching on (Triton
  gathers requests into one ``Runtime.infer`` call of at most ``max_batch`` rows).
- ``NAME_image``: ``image`` BYTES ``[-1, 1]`` (encoded PNG/JPEG) -> ``labels`` BYTES, ``probabilities`` FP32 and
  ``indices`` INT32, each ``[-1, k]``: the artifact's recorded preprocessing and top-k. Not dynamically batched:
  PyTriton reports an exception for every request of an execution, so a corrupt upload batched with others
  would fail them too; one request per execution keeps each error to its sender (decoding dominates anyway).

The same interface as the ``NAME`` / ``NAME_image`` models of :func:`psvit.serve.write_repository`, so a
client does not change between this server and a stock Triton fleet.

SIGTERM and SIGINT stop intake, let Triton finish in-flight requests (up to ``exit_timeout_s``), stop the
server and return; the CLI then exits 0.
"""
from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import require
from ..outputs import Output, OutputKind, check_output
from .errors import ServeError, check_at_least
from .environment import prepare_process_environment
from .repository import DEFAULT_MAX_BATCH, check_within_profile

# Triton endpoints PyTriton guards with its access token. The statistics endpoint is left open (read-only,
# and the load generator reads queue vs compute times from it); model loading/unloading, shared memory,
# tracing and logging settings stay closed.
RESTRICTED_ENDPOINTS = ["model-repository", "shared-memory", "trace", "logging"]
IMAGE_SUFFIX = "_image"


@dataclass(frozen=True)
class ServeOptions:
    name: str = "psvit"
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int | None = None  # None: 32, or the engine profile's max when smaller
    max_queue_delay_ms: float = 1.0
    dynamic_batching: bool = True
    instances: int = 1
    topk: int = 5
    exit_timeout_s: int = 30
    log_file: str | None = None  # tritonserver's own log; None: a file in the temp folder (named when ready)
    log_verbose: int = 0

    def ports(self) -> tuple[tuple[str, int], ...]:
        """(option, port) of the HTTP, gRPC and metrics endpoints."""
        return (("--http-port", self.http_port), ("--grpc-port", self.grpc_port),
                ("--metrics-port", self.metrics_port))

    def check(self) -> None:
        for label, port in self.ports():
            if not 0 < port < 65536:
                raise ServeError(f"{label} {port} is not a TCP port (1..65535)")
        if len({self.http_port, self.grpc_port, self.metrics_port}) != 3:
            raise ServeError("--http-port, --grpc-port and --metrics-port must differ")
        check_at_least((("--max-batch", self.max_batch, 1), ("--max-queue-delay-ms", self.max_queue_delay_ms, 0),
                        ("--instances", self.instances, 1), ("--topk", self.topk, 1),
                        ("--exit-timeout", self.exit_timeout_s, 0)))


def check_port_free(host: str, port: int, option: str) -> None:
    """Refuse a port another process listens on (tritonserver would fail to start, less clearly)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free for Triton too
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServeError(f"{option} {port} on {host} is taken ({exc.strerror}); stop the other server or choose "
                             f"another port") from None


def served_max_batch(rt: Any, requested: int | None) -> int:
    """Rows per execution: ``requested`` (default 32), within an engine profile's max."""
    limit = rt.backend.limits.max_batch
    check_within_profile(requested, limit)
    chosen = requested or DEFAULT_MAX_BATCH
    return min(chosen, limit) if limit is not None else chosen


def tensor_model(rt: Any) -> Callable[..., dict[str, np.ndarray]]:
    """The ``NAME`` model's inference callable: a batch of requests as one ``Runtime.infer`` call."""
    from pytriton.decorators import batch

    @batch
    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": rt.infer(images)}  # (N, classes) for (N, C, H, W)

    return infer


def image_model(rt: Any, topk: int) -> Callable[[list[Any]], list[dict[str, np.ndarray]]]:
    """The ``NAME_image`` model's inference callable: encoded images -> top-k per row."""
    from ..preprocessing import decode_image

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        responses = []
        for request in requests:
            rows = request["image"]  # (n, 1) bytes
            images = [decode_image(bytes(row[0])) for row in rows]  # DataError: this request's error
            preds = rt.predict(images, topk=topk)
            responses.append({
                "labels": np.array([[p.name.encode() for p in row] for row in preds], dtype=np.bytes_),
                "probabilities": np.array([[p.probability for p in row] for row in preds], dtype=np.float32),
                "indices": np.array([[p.index for p in row] for row in preds], dtype=np.int32),
            })
        return responses

    return infer


class _Stop(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM; PyTriton's serve loop handles it as Ctrl-C (drain, stop)."""


def _raise_stop(signum: int, _frame: Any) -> None:
    raise _Stop(f"signal {signum}")


def serve(rt: Any, options: ServeOptions = ServeOptions(), log: Callable[[str], None] | None = None,
          on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Serve ``rt`` (a :class:`psvit.runtime.Runtime`) until SIGTERM/SIGINT; see the module docstring.

    ``on_ready`` gets the endpoints and model names once both models are loaded.
    """
    require("pytriton", "'psvit-deploy[serve]'", "psvit-export serve (PyTriton)")
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    say = log or (lambda _m: None)
    options.check()
    max_batch = served_max_batch(rt, options.max_batch)
    c, h, w = rt.input_shape
    classes = int(rt.infer(np.zeros((1, c, h, w), np.float32)).shape[1])  # also warms the backend up
    topk = min(options.topk, classes)
    image_ok = rt.backend.preprocess is not None
    # The instances share this one Runtime: ONNX Runtime on CPU runs concurrent calls in parallel; GPU
    # backends serialise calls per Runtime (rt.concurrency), so there more instances overlap only
    # the Python work around the calls.
    for option, port in options.ports():
        check_port_free(options.host, port, option)
    prepare_process_environment()
    log_file = Path(options.log_file or Path(tempfile.gettempdir()) / f"psvit-serve-{os.getpid()}.log")
    check_output(Output(log_file, OutputKind.FILE, "--log-file"))
    config = TritonConfig(
        log_file=log_file,
        http_address=options.host, grpc_address=options.host, metrics_address=options.host,
        http_port=options.http_port, grpc_port=options.grpc_port, metrics_port=options.metrics_port,
        exit_timeout_secs=options.exit_timeout_s, log_verbose=options.log_verbose,
    )  # with a log file, tritonserver's log stays out of stdout (PyTriton echoes the process output there)
    batcher = (DynamicBatcher(max_queue_delay_microseconds=int(round(options.max_queue_delay_ms * 1000)))
               if options.dynamic_batching else None)
    models = [options.name] + ([options.name + IMAGE_SUFFIX] if image_ok else [])
    host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
    info = {"http": f"http://{host}:{options.http_port}", "grpc": f"{host}:{options.grpc_port}",
            "metrics": f"http://{host}:{options.metrics_port}/metrics", "models": models, "max_batch": max_batch,
            "dynamic_batching": options.dynamic_batching, "max_queue_delay_ms": options.max_queue_delay_ms,
            "instances": options.instances, "topk": topk, "log_file": str(log_file), "runtime": rt.info()}
    if not image_ok:
        say(f"{rt.name} records no preprocessing: serving {options.name} only (no {options.name}{IMAGE_SUFFIX})")
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        with Triton(config=config, security_config=TritonSecurityConfig(
                restricted_endpoints=list(RESTRICTED_ENDPOINTS))) as triton:
            triton.bind(
                model_name=options.name, infer_func=[tensor_model(rt) for _ in range(options.instances)],
                inputs=[Tensor(name="images", dtype=np.float32, shape=(c, h, w))],
                outputs=[Tensor(name="logits", dtype=np.float32, shape=(classes,))],
                config=ModelConfig(max_batch_size=max_batch, batcher=batcher), strict=True,
            )
            if image_ok:
                triton.bind(
                    model_name=options.name + IMAGE_SUFFIX,
                    infer_func=[image_model(rt, topk) for _ in range(options.instances)],
                    inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
                    outputs=[Tensor(name="labels", dtype=np.bytes_, shape=(topk,)),
                             Tensor(name="probabilities", dtype=np.float32, shape=(topk,)),
                             Tensor(name="indices", dtype=np.int32, shape=(topk,))],
                    config=ModelConfig(max_batch_size=max_batch, batcher=None), strict=True,
                )
            triton.run()  # starts tritonserver and waits until the models are loaded
            if on_ready is not None:
                on_ready(info)
            triton.serve()  # returns after SIGINT/SIGTERM, once Triton has drained and stopped
    except _Stop:  # SIGTERM before the serve loop ran: leaving the with block stopped the server
        say("stopped by SIGTERM before the models were ready")
    finally:
        signal.signal(signal.SIGTERM, previous)
