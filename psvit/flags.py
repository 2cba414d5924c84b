"""Command-line spellings shared by the CLI and the commands recorded in artifacts.

A sidecar records the ``psvit-export trt`` command that rebuilds its engine; the CLI declares its options
with the same names, so a recorded command always parses (``tests/test_cli_trt.py`` parses them back).
Standard library only: the CLI imports this at start-up.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any

# The ``psvit-export trt`` flag of each build setting. The CLI declares its options with these names and the
# rebuild command recorded in a sidecar is written from them (tests parse it back with the CLI).
TRT_FLAGS = {
    "out": "--out", "fp16": "--fp16", "int8": "--int8", "calib_data": "--calib-data",
    "calib_count": "--calib-count", "calib_batch": "--calib-batch", "calib_method": "--calib-method",
    "calib_cache": "--calib-cache", "batch": "--batch", "workspace": "--workspace",
    "optimization_level": "--optimization-level", "timing_cache": "--timing-cache", "builder": "--builder",
    "force": "--force", "onnx_out": "--onnx-out",
}


def trt_command(source: str | os.PathLike, settings: Mapping[str, Any]) -> str:
    """The ``psvit-export trt SOURCE ...`` command line of ``settings`` (keys of :data:`TRT_FLAGS`): True is
    a bare flag, None and False are left out, a tuple batch is written MIN:OPT:MAX."""
    parts = ["psvit-export", "trt", str(source)]
    for key, value in settings.items():
        if value is None or value is False:
            continue
        flag = TRT_FLAGS[key]
        if value is True:
            parts.append(flag)
        else:
            parts += [flag, ":".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)]
    return shlex.join(parts)
