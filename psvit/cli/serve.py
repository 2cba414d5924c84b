"""``psvit-export serve ARTIFACT``: a real Triton Inference Server (PyTriton) running the psvit runtime."""
from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.markup import escape

from . import app
from .console import err_console
from .options import BackendChoice, DeviceOpt, ThreadsOpt


@app.command("serve")
def serve_command(
    artifact: Annotated[str, typer.Argument(
        metavar="ARTIFACT", help="Engine, .onnx file, checkpoint or 'demo' (anything psvit.runtime loads).")],
    http_port: Annotated[int, typer.Option("--http-port", help="HTTP/REST port (KServe v2 protocol).")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Prometheus metrics port.")] = 8002,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "0.0.0.0",
    name: Annotated[str, typer.Option(help="Model name; the image model is NAME_image.")] = "psvit",
    max_batch: Annotated[Optional[int], typer.Option(
        "--max-batch", help="Most rows per execution (default 32, or the engine profile's max).")] = None,
    max_queue_delay_ms: Annotated[float, typer.Option(
        "--max-queue-delay-ms", help="Dynamic batcher: longest wait for a fuller batch (ms).")] = 1.0,
    no_dynamic_batching: Annotated[bool, typer.Option(
        "--no-dynamic-batching", help="One request per execution (Triton's default scheduler).")] = False,
    instances: Annotated[int, typer.Option(help="Model instances (threads calling the runtime).")] = 1,
    topk: Annotated[int, typer.Option(help="Classes returned by NAME_image.")] = 5,
    backend: Annotated[BackendChoice, typer.Option(help="Backend [default: auto, from the artifact].")
                       ] = BackendChoice.auto,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    exit_timeout: Annotated[int, typer.Option(
        "--exit-timeout", help="Seconds to let in-flight requests finish on SIGTERM/SIGINT.")] = 30,
    log_file: Annotated[Optional[str], typer.Option(
        "--log-file", help="tritonserver's log (default: psvit-serve-PID.log in the temp folder).")] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the endpoints as one JSON line on stdout once the models are ready.")] = False,
) -> None:
    """Serve an artifact on Triton (PyTriton): HTTP/gRPC, dynamic batching, health, metrics; SIGTERM drains."""
    from ..outputs import Output, OutputKind, check_outputs
    from ..runtime import load
    from ..serve.server import ServeOptions, serve

    options = ServeOptions(
        name=name, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        max_batch=max_batch, max_queue_delay_ms=max_queue_delay_ms, dynamic_batching=not no_dynamic_batching,
        instances=instances, topk=topk, exit_timeout_s=exit_timeout, log_file=log_file,
    )
    options.check()  # before loading the artifact
    check_outputs([Output(log_file, OutputKind.FILE, "--log-file")], inputs=[artifact])

    def ready(info: dict) -> None:
        if json_out:
            print(json.dumps(info), flush=True)  # one machine-readable line, not wrapped by rich
            return
        err_console.print(f"[bold green]ready:[/] models {', '.join(info['models'])} on {escape(info['http'])} "
                          f"(HTTP), {escape(info['grpc'])} (gRPC), metrics {escape(info['metrics'])}; "
                          f"max batch {info['max_batch']}, dynamic batching "
                          f"{'on' if info['dynamic_batching'] else 'off'}; server log {escape(info['log_file'])}; "
                          f"SIGTERM or Ctrl-C stops", highlight=False)

    with load(artifact, backend=backend.value, device=device, **({"threads": threads} if threads else {})) as rt:
        serve(rt, options, log=lambda m: err_console.print(f"[dim]{escape(m)}[/]", highlight=False), on_ready=ready)
    err_console.print("stopped: in-flight requests answered, server shut down", highlight=False)
