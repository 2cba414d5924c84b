"""Output paths, checked before the work: every command declares what it reads and what it writes.

One call, before anything slow runs::

    check_outputs([Output(out, OutputKind.ONNX), Output(json_out, OutputKind.JSON, "--json")],
                  inputs=[model, calib_data])

refuses, with an :class:`psvit.errors.OutputPathError` that says what to do:

- an output that *is* one of the inputs (the same file after resolving relative paths, symlinks and hard
  links): ``calibrate a.onnx --out a.onnx`` would replace the model it reads;
- two outputs that are the same file (``--json x.json --calib-cache x.json``);
- an output path that is an existing folder;
- an output whose suffix does not fit its kind (an ONNX model ``.onnx``, an engine ``.engine/.plan/.trt``,
  JSON ``.json``, a checkpoint ``.safetensors``, a plot a format matplotlib writes);
- a missing or read-only output folder;
- a device, FIFO or socket (an output replaces what is there; a symlink is written through to its target);
- a name so long that the temporary files and sidecars named after it would exceed the file system's limit.

Inputs that are not paths (``demo``, ``synthetic``, variant names, arrays) or do not exist are ignored: their
loaders say what is wrong with them. Write each output with :func:`psvit.provenance.atomic_output`.
"""
from __future__ import annotations

import enum
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import ENGINE_SUFFIXES, ONNX_SUFFIXES, SAFETENSORS_SUFFIXES
from .errors import OutputPathError
from .provenance import check_output_folder, output_target

# The formats matplotlib's Agg canvas writes (matplotlib.backend_bases.FigureCanvasBase.get_supported_filetypes
# of matplotlib 3.7-3.10); asked from matplotlib itself where it is installed.
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".eps", ".ps",
                 ".pgf", ".raw", ".rgba")


class OutputKind(enum.Enum):
    """What an output is: its noun in messages and the suffixes it may have (None: any)."""

    ONNX = ("an ONNX model", ONNX_SUFFIXES)
    ENGINE = ("a TensorRT engine", ENGINE_SUFFIXES)
    JSON = ("a JSON file", (".json",))
    CHECKPOINT = ("a checkpoint", SAFETENSORS_SUFFIXES)
    PLOT = ("a plot", PLOT_SUFFIXES)
    FILE = ("a file", None)

    @property
    def noun(self) -> str:
        """With its article: "an ONNX model"."""
        return self.value[0]

    @property
    def suffixes(self) -> tuple[str, ...] | None:
        if self is OutputKind.PLOT:
            return plot_suffixes()
        return self.value[1]


def plot_suffixes() -> tuple[str, ...]:
    """The file formats matplotlib writes (its own list where it is installed)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return PLOT_SUFFIXES
    return (".png", *sorted("." + s for s in FigureCanvasBase.get_supported_filetypes() if s != "png"))


@dataclass(frozen=True)
class Output:
    """One file a command will write: where (None: not written this time), its kind, and the option that
    names it (how messages refer to it)."""

    path: str | os.PathLike | None
    kind: OutputKind
    option: str = "--out"


def _example(path: Path, kind: OutputKind) -> str:
    suffix = (kind.suffixes or (".out",))[0]
    stem = path.name.split(".")[0] or "output"
    return str(path.with_name(stem + suffix))


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _input_paths(inputs: Iterable[Any]) -> list[Path]:
    paths = []
    for spec in inputs:
        if isinstance(spec, (str, os.PathLike)) and str(spec) and Path(spec).exists():
            paths.append(Path(spec))
    return paths


def check_output(output: Output) -> Path:
    """One output on its own: not a folder, a device or a name too long for the files made next to it
    (:func:`psvit.provenance.output_target`; a symlink is checked at its target), a fitting suffix, a writable
    folder. Returns its path."""
    path = Path(output.path)  # type: ignore[arg-type]
    option, kind = output.option, output.kind
    try:
        output_target(path)
    except OutputPathError as exc:
        raise OutputPathError(f"{option}: {exc}") from None
    if path.is_dir():
        raise OutputPathError(f"{option} {path} is a folder; name a file in it, e.g. "
                              f"{path / ('output' + (kind.suffixes or ('',))[0])}")
    suffixes = kind.suffixes
    if suffixes is not None and not path.name.lower().endswith(suffixes):
        raise OutputPathError(f"{option} {path}: {kind.noun} must end in {', '.join(suffixes)}; "
                              f"e.g. {_example(path, kind)}")
    check_output_folder(path)
    return path


def check_outputs(outputs: Iterable[Output], inputs: Iterable[Any] = ()) -> list[Path]:
    """Check every output a command will write against each other and against its inputs (see the module
    docstring); call it before any work. Returns the output paths (None entries skipped)."""
    declared = [o for o in outputs if o.path is not None and str(o.path)]
    sources = _input_paths(inputs)
    checked: list[tuple[Output, Path]] = []
    for output in declared:
        path = check_output(output)
        for src in sources:
            if _same_file(path, src):
                other_name = path.with_name(path.stem + ".out" + path.suffix)
                raise OutputPathError(f"{output.option} {path} is also an input of this command ({src}); writing "
                                      f"it would destroy that input. Choose another file name, e.g. {other_name}")
        for other, other_path in checked:
            if _same_file(path, other_path):
                raise OutputPathError(f"{other.option} and {output.option} both name {path}; one would overwrite "
                                      f"the other. Give them different file names")
        checked.append((output, path))
    return [p for _, p in checked]
