"""Reading ONNX graphs written by (or given to) the toolchain: one loader with clear errors, node naming."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ArtifactError

if TYPE_CHECKING:
    import onnx


def load_onnx_graph(path: str | os.PathLike, hint: str = "") -> "onnx.ModelProto":
    """Load the graph of ``path`` without its external weights; a missing or unreadable file raises
    :class:`psvit.errors.ArtifactError` (``hint`` says what to pass instead)."""
    import onnx

    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    if not path.is_file():
        raise ArtifactError(f"ONNX file {path} does not exist{suffix}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ArtifactError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc}){suffix}") from exc


def name_nodes(model: "onnx.ModelProto") -> None:
    """Give unnamed nodes a unique name (block lists and the quantizer refer to nodes by name)."""
    seen = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)
