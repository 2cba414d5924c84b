"""What an artifact is: the one detector of artifact kinds, used by every command and the Python API.

Where the path exists the content decides (an ONNX protobuf, a TensorRT plan, a safetensors header, a
PyTorch zip or pickle), so a ``.ckpt`` is never read as ONNX and a renamed file is still recognised;
otherwise the name decides (``demo``, a registered variant name, the suffix). Folders and files of no
known kind are refused with a message naming what is accepted. Imports neither torch nor onnx.
"""
from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ArtifactError, UnknownVariantError

DEMO = "demo"
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
SAFETENSORS_SUFFIXES = (".safetensors",)
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
CHECKPOINT_SUFFIXES = (*SAFETENSORS_SUFFIXES, *STATE_DICT_SUFFIXES)
# First bytes of serialized TensorRT plans: "ftrt" (TensorRT 8-11), "ptrt" (older), "vtrt" (TensorRT-RTX,
# seen with 1.7). A plan with another header is still accepted where its sidecar names it.
PLAN_MAGICS = (b"ftrt", b"ptrt", b"vtrt")
RTX_PLAN_MAGIC = b"vtrt"
ACCEPTED = (f"an .onnx file, a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}, with or without its .json "
            f"sidecar), a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}), 'demo' or a variant name")
_HEAD = 4096  # bytes read to decide a file's kind

# ONNX ModelProto fields (onnx.proto3): number -> protobuf wire type (0 varint, 2 length-delimited)
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


class ArtifactKind(str, enum.Enum):
    """What an artifact is, and so which backend runs it by default."""

    CHECKPOINT = "checkpoint"  # safetensors / PyTorch state dict, or the bundled 'demo'
    VARIANT = "variant"  # a registered variant name: random weights
    ONNX = "onnx"
    ENGINE = "engine"  # a serialized TensorRT / TensorRT-RTX plan

    @property
    def backend(self) -> str:
        """``torch``, ``onnxruntime`` or ``tensorrt``."""
        return {"onnx": "onnxruntime", "engine": "tensorrt"}.get(self.value, "torch")


@dataclass(frozen=True)
class Artifact:
    """A detected artifact: its kind, the file (None for a variant name or 'demo'), its format and how the
    kind was decided ("content" or "name")."""

    kind: ArtifactKind
    spec: str
    path: Path | None
    format: str  # "onnx" | "tensorrt-plan" | "safetensors" | "torch-zip" | "torch-pickle" | "demo" | "variant"
    decided_by: str  # "content" | "name"

    @property
    def backend(self) -> str:
        return self.kind.backend


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """The provenance sidecar of an engine: ``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


def looks_like_onnx(head: bytes, size: int) -> bool:
    """True when ``head`` (the first bytes of a ``size``-byte file) parses as the start of an ONNX ModelProto:
    ``ir_version`` first (every exporter writes it), then only ModelProto fields of the right wire type."""
    if not head.startswith(b"\x08"):
        return False
    pos, fields = 0, 0
    while pos < len(head):
        tag = _varint(head, pos)
        if tag is None:
            return fields > 0  # the head ends inside a tag
        number, wire = tag[0] >> 3, tag[0] & 7
        if _ONNX_FIELDS.get(number) != wire:
            return False
        value = _varint(head, tag[1])
        if value is None:
            return fields > 0
        if number == 1 and not 1 <= value[0] <= 64:
            return False  # no ONNX IR version is that
        pos = value[1]
        if wire == 2:
            if value[0] > size - pos:  # beyond the end of the file: only a truncated graph may do that
                return number == 7 and fields > 0
            pos += value[0]
        fields += 1
    return fields > 0


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def content_format(head: bytes, size: int) -> str | None:
    """The format the first bytes of a file show, or None: see :class:`Artifact`'s ``format``."""
    if head[:4] in PLAN_MAGICS:
        return "tensorrt-plan"
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"  # torch.save's default (zip) format
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch-pickle"  # torch.save's legacy format (a pickle protocol 2-5 header)
    if _is_safetensors(head, size):
        return "safetensors"
    if looks_like_onnx(head, size):
        return "onnx"
    return None


_KIND_OF_FORMAT = {"tensorrt-plan": ArtifactKind.ENGINE, "torch-zip": ArtifactKind.CHECKPOINT,
                   "torch-pickle": ArtifactKind.CHECKPOINT, "safetensors": ArtifactKind.CHECKPOINT,
                   "onnx": ArtifactKind.ONNX}


def _by_suffix(path: Path) -> tuple[ArtifactKind, str] | None:
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return ArtifactKind.ONNX, "onnx"
    if suffix in ENGINE_SUFFIXES:
        return ArtifactKind.ENGINE, "tensorrt-plan"
    if suffix in SAFETENSORS_SUFFIXES:
        return ArtifactKind.CHECKPOINT, "safetensors"
    if suffix in STATE_DICT_SUFFIXES:
        return ArtifactKind.CHECKPOINT, "torch-zip"
    return None


_UNREADABLE = {
    ArtifactKind.ONNX: "is not a readable ONNX file (by its content: truncated or not an ONNX model); "
                       "re-export it with `psvit-export onnx`",
    ArtifactKind.CHECKPOINT: "is not a readable checkpoint: unknown checkpoint format (neither safetensors nor a "
                             "PyTorch zip/pickle by its content)",
}


def _detect_bytes(data: bytes, spec: str) -> Artifact:
    fmt = content_format(data[:_HEAD], len(data))
    if fmt not in ("onnx", "tensorrt-plan"):
        raise ArtifactError(f"{spec} is neither a serialized ONNX model nor a TensorRT plan")
    return Artifact(_KIND_OF_FORMAT[fmt], spec, None, fmt, "content")


def detect_artifact(spec: str | os.PathLike | bytes) -> Artifact:
    """Decide what ``spec`` is (a path, ``"demo"``, a variant name, or serialized ONNX / plan bytes).

    Raises :class:`ArtifactError` for folders, unreadable files and files of no known kind, and
    :class:`UnknownVariantError` for a bare name that is neither a file nor a registered variant.
    """
    if isinstance(spec, (bytes, bytearray, memoryview)):
        return _detect_bytes(bytes(spec), "the bytes given")
    text = str(spec)
    path = Path(text)
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ArtifactError(f"{text[:120]}{'...' if len(text) > 120 else ''} is not a usable path "
                            f"({exc.strerror}); expected {ACCEPTED}") from exc
    if is_dir:
        raise ArtifactError(f"{text} is a folder; expected {ACCEPTED}")
    if is_file:
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(_HEAD)
        except OSError as exc:
            raise ArtifactError(f"{text} cannot be read ({exc.strerror})") from exc
        if size == 0:
            raise ArtifactError(f"{text} is empty (0 bytes): an interrupted write or copy? Make it again (e.g. "
                                f"psvit-export onnx) or copy the whole file")
        fmt = content_format(head, size)
        if fmt is not None:
            return Artifact(_KIND_OF_FORMAT[fmt], text, path, fmt, "content")
        if sidecar_path(path).is_file():  # its sidecar says it is an engine; TensorRT checks the plan
            return Artifact(ArtifactKind.ENGINE, text, path, "tensorrt-plan", "name")
        named = _by_suffix(path)
        if named is not None and named[0] is ArtifactKind.ENGINE:
            return Artifact(ArtifactKind.ENGINE, text, path, "tensorrt-plan", "name")  # the loader explains
        if named is not None:
            raise ArtifactError(f"{text} {_UNREADABLE[named[0]]}")
        raise ArtifactError(f"cannot tell what {text} is: unknown checkpoint format, and not an ONNX model or a "
                            f"TensorRT plan either (by its content); expected {ACCEPTED}")
    if text == DEMO:
        return Artifact(ArtifactKind.CHECKPOINT, text, None, "demo", "name")
    named = _by_suffix(path)
    if named is not None:  # a file that does not exist (yet): its loader says so
        return Artifact(named[0], text, path, named[1], "name")
    from .registry import list_models, unknown_variant

    if text in list_models():
        return Artifact(ArtifactKind.VARIANT, text, None, "variant", "name")
    if path.suffix or os.sep in text or (os.altsep and os.altsep in text):
        raise ArtifactError(f"cannot tell what {text!r} is (no such file, and not a known kind by its name); "
                            f"expected {ACCEPTED}")
    raise UnknownVariantError(
        f"{text!r} is not an existing checkpoint file or 'demo'; as a variant name: {unknown_variant(text)}"
    )
