"""PyTorch -> ONNX with the dynamo exporter (``torch.onnx.export(..., dynamo=True)``).

Why the dynamo exporter: it traces with ``torch.export`` and records the batch as a symbolic dimension
(``dynamic_shapes``), so a model that never reads ``x.shape`` (PSViT with ``exportable=True``) comes out
with zero Shape/Gather/Concat chains and concrete per-stage token counts. The TorchScript exporter
(``dynamo=False``) traces concrete sizes into run-time shape arithmetic (timm's DeiT export holds 39 Shape
nodes) and is deprecated in PyTorch 2.9+.

Opset: 20 by default, the first with the ``Gelu`` op, which ONNX Runtime fuses with the bias before it
(``BiasGelu``) and TensorRT imports as one activation (:mod:`.passes` keeps GELU fusable below 20 too).
18 is the lowest opset the exporter implements natively (17 is produced by the ONNX version converter from
18 and is accepted; below 17 there is no LayerNormalization op, which TensorRT needs to keep normalisation
accurate in FP16).
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from .errors import ExportError
from .passes import optimize_graph

if TYPE_CHECKING:
    import onnx

MIN_OPSET = 17
DEFAULT_OPSET = 20  # Gelu op (see the module docstring)
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
BATCH_SYMBOL = "batch"
TRACE_BATCH = 2  # torch.export specialises size-1 dims, so a dynamic batch is traced with 2
# Terminal escape sequences (torch colours its messages): CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or
# ESC backslash), then the short ones (ESC, intermediate bytes, a final byte: ESC c, ESC ( B).
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-~])")


def max_opset() -> int:
    """The newest opset the installed ``onnx`` knows."""
    import onnx.defs

    return onnx.defs.onnx_opset_version()


def check_opset(opset: int) -> None:
    top = max_opset()
    if not MIN_OPSET <= opset <= top:
        raise ExportError(
            f"opset {opset} is not supported: use {MIN_OPSET}..{top} (default {DEFAULT_OPSET}). Opsets below "
            f"{MIN_OPSET} lack LayerNormalization, which keeps normalisation accurate in FP16 TensorRT builds."
        )


def parse_batch(batch: str | int) -> int | None:
    """``"dynamic"`` -> None (symbolic batch); a positive integer (or its text) -> that fixed batch."""
    text = batch.strip().lower() if isinstance(batch, str) else None
    if text == "dynamic":
        return None
    value = int(text) if text is not None and text.isdecimal() else batch  # isdigit() accepts "²"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExportError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    return value


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (torch colours "This is step 1/3")."""
    return _ANSI.sub("", text)


def wrapped_interrupt(exc: BaseException) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` in ``exc``'s ``__cause__``/``__context__`` chain (``exc`` included), if any.

    A Ctrl-C or SIGTERM (the CLI raises ``KeyboardInterrupt`` for both) that lands inside torch's exporter
    can come back wrapped in torch's own exception type."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        todo += [e.__context__, e.__cause__]
    return None


def _export_error(exc: Exception) -> ExportError:
    """Our one-line error for a failed ``torch.onnx.export``: torch's first line, without colours."""
    text = strip_ansi(str(exc)).strip()
    return ExportError(f"torch.onnx.export (dynamo) failed for this model: {type(exc).__name__}: "
                       f"{text.splitlines()[0] if text else ''}")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress lines and warnings; keep them out of the CLI output."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def torch_to_onnx(
    model: torch.nn.Module,
    *,
    batch: int | None = None,
    opset: int = DEFAULT_OPSET,
) -> "onnx.ModelProto":
    """Trace ``model`` (exportable PSViT, eval mode) into an optimized FP32 ONNX model.

    Args:
        batch: None for a symbolic batch dimension named ``batch``; an integer fixes it.
        opset: ONNX opset, ``MIN_OPSET`` or newer.
    """
    import onnx_ir as ir

    check_opset(opset)
    cfg = model.cfg
    n = TRACE_BATCH if batch is None else batch
    example = torch.zeros(n, cfg.in_chans, cfg.img_size, cfg.img_size)  # (B, C, H, W)
    dynamic_shapes = None
    if batch is None:
        dynamic_shapes = ({0: torch.export.Dim(BATCH_SYMBOL, min=1)},)
    with _quiet_exporter(), torch.no_grad():
        try:
            program = torch.onnx.export(
                model, (example,), dynamo=True, dynamic_shapes=dynamic_shapes, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], optimize=False, verbose=False,
                report=False,
            )
        except Exception as exc:  # the exporter wraps torch.export errors in its own types
            interrupt = wrapped_interrupt(exc)
            if interrupt is not None:  # a signal stopped the export: not a failure of the model
                raise interrupt from None
            raise _export_error(exc) from exc
        optimize_graph(program.model)
    proto = ir.serde.serialize_model(program.model)
    proto.producer_name = "psvit-deploy (torch.onnx dynamo)"
    proto.producer_version = torch.__version__
    return proto
