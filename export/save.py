"""Writing ONNX files: inline weights below protobuf's 2 GB limit, one external ``<name>.data`` file above."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..outputs import Output, OutputKind, check_outputs
from ..provenance import atomic_output

if TYPE_CHECKING:
    import onnx

PROTOBUF_LIMIT = 2**31 - 1  # bytes: a serialized protobuf message cannot be larger
GRAPH_ALLOWANCE = 64 << 20  # room for the graph, names and metadata next to the weights
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def tensor_bytes(tensor: "onnx.TensorProto") -> int:
    """Size of an initializer's data (inline or external)."""
    if tensor.HasField("raw_data") and tensor.raw_data:
        return len(tensor.raw_data)
    for entry in tensor.external_data:
        if entry.key == "length":
            return int(entry.value)
    n = 1
    for d in tensor.dims:
        n *= d
    return n * _ITEMSIZE.get(tensor.data_type, 4)


def initializer_bytes(model: "onnx.ModelProto") -> int:
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def needs_external_data(weight_bytes: int, limit: int = PROTOBUF_LIMIT, allowance: int = GRAPH_ALLOWANCE) -> bool:
    """True when weights plus room for the graph would not fit in one protobuf message."""
    if weight_bytes < 0:
        raise ValueError(f"weight_bytes must be non-negative, got {weight_bytes}")
    return weight_bytes + allowance > limit


def external_data_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".data")


def check_output_path(path: str | os.PathLike, inputs: Iterable[Any] = ()) -> Path:
    """Fail early (before minutes of work) on an ONNX output that cannot be written or is one of ``inputs``."""
    return check_outputs([Output(path, OutputKind.ONNX)], inputs=inputs)[0]


def save_onnx(model: "onnx.ModelProto", path: str | os.PathLike, *, data_name: str | None = None,
              external: bool | None = None) -> Path | None:
    """Save ``model`` to ``path``; weights go to ``data_name`` (next to it) when ``external`` (None: when
    :func:`needs_external_data`). Returns the external data path, if any. ``model`` is not modified."""
    import onnx

    path = Path(path)
    if external is None:
        external = needs_external_data(initializer_bytes(model))
    if not external:
        onnx.save_model(model, str(path))
        return None
    data_name = data_name or external_data_path(path).name
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # save_model moves the weights out of the proto it is given
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return path.with_name(data_name)


@contextlib.contextmanager
def atomic_onnx_output(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`psvit.provenance.atomic_output` for an ``.onnx`` file, plus its external data file
    (written under its final name, since the model refers to it): removed again if the block fails."""
    path = Path(path)
    data = external_data_path(path)
    before = data.stat().st_mtime_ns if data.exists() else None
    try:
        with atomic_output(path, suffix=".onnx") as tmp:
            yield tmp
    except BaseException:
        if data.exists() and (before is None or data.stat().st_mtime_ns != before):
            data.unlink()
        raise
