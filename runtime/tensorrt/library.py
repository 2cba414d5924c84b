"""Which TensorRT: ``tensorrt`` (10.x/11.x, data-centre and workstation GPUs) or ``tensorrt_rtx`` (RTX GPUs;
also builds ahead of time without a GPU). Both share the strongly-typed API this package uses."""
from __future__ import annotations

import importlib
from types import ModuleType

from ...errors import MissingDependencyError
from ..errors import BackendError

FLAVOURS = ("tensorrt", "tensorrt_rtx")
INSTALL = {
    "tensorrt": "pip install tensorrt (data-centre GPUs)",
    "tensorrt_rtx": "pip install tensorrt-rtx (RTX GPUs; also builds on a CPU-only machine)",
}


def normalise_flavour(flavour: str) -> str:
    """``tensorrt-rtx``/``TensorRT-RTX`` -> ``tensorrt_rtx``."""
    return flavour.strip().lower().replace("-", "_")


def import_tensorrt(flavour: str = "auto", purpose: str = "") -> tuple[ModuleType, str]:
    """(module, name) for ``flavour``: ``tensorrt``, ``tensorrt_rtx`` or ``auto`` (``tensorrt`` if it imports,
    else TensorRT-RTX). A missing one raises :class:`MissingDependencyError` naming the pip command."""
    flavour = normalise_flavour(flavour)
    if flavour not in ("auto", *FLAVOURS):
        raise BackendError(f"unknown TensorRT flavour {flavour!r}; use one of auto, {', '.join(FLAVOURS)}")
    names = list(FLAVOURS) if flavour == "auto" else [flavour]
    for name in names:
        try:
            return importlib.import_module(name), name
        except ImportError:
            continue
    how = " or ".join(INSTALL[n] for n in names)
    why = f" ({purpose})" if purpose else ""
    raise MissingDependencyError(f"no TensorRT is installed{why}: {', '.join(names)} cannot be imported. "
                                 f"Install it with: {how}")
