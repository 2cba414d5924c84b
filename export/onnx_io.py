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

    from ..artifacts import ArtifactKind, detect_artifact, sidecar_path

    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder, not an ONNX file{suffix or '; pass the .onnx file in it'}")
    if not path.is_file():
        raise ArtifactError(f"ONNX file {path} does not exist{suffix}")
    art = detect_artifact(path)  # by content: an unknown kind raises, naming what is accepted
    if art.kind is ArtifactKind.ENGINE:
        raise ArtifactError(f"{path} is a TensorRT engine, not an ONNX file; its provenance (ONNX, precision, "
                            f"profile, build options) is in its sidecar {sidecar_path(path).name}{suffix}")
    if art.kind is not ArtifactKind.ONNX:
        raise ArtifactError(f"{path} is a {art.kind.value} ({art.format}), not an ONNX file{suffix}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ArtifactError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc}){suffix}") from exc
    if not model.graph.node:
        raise ArtifactError(f"{path} holds no graph (no nodes): a truncated or foreign file; export it again "
                            f"with `psvit-export onnx`{suffix}")
    return model


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
