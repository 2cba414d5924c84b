"""Typed fields of frozen dataclasses: check user-given values against the annotations, once, in one place.

A configuration built from keyword arguments or JSON can hold anything (``num_classes="ten"``,
``depths="abc"``); without a check the first comparison or ``range()`` fails far away with a raw
``TypeError``, or a string is silently iterated as a sequence of characters. :func:`check_fields` turns
every field into the type its annotation names, or raises :class:`ConfigError` naming the field, the
expected type and what was given. Supported annotations: ``int``, ``float``, ``bool``, ``str``,
``tuple[X, ...]`` / ``tuple[X, X, X]`` (any list, tuple or 1-D array of X; lengths are checked by the
owner) and ``X | None``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import ConfigError

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def describe(hint: Any) -> str:
    """The expected type in words: ``"a sequence of integers"``."""
    if hint in _NAMES:
        return _NAMES[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return f"a sequence of {_plural(args[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) if a is not type(None) else "None" for a in args)
    return getattr(hint, "__name__", str(hint))


def _plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(hint, describe(hint))


def _scalar(value: Any, hint: type) -> Any:
    """``value`` as ``hint`` (int, float, bool or str), or raise ValueError."""
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
    elif hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            return int(value)
    elif hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ValueError


def coerce(value: Any, hint: Any, what: str) -> Any:
    """``value`` converted to the type ``hint`` names; :class:`ConfigError` naming ``what`` otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            (inner,) = [a for a in args if a is not type(None)]
            return coerce(value, inner, what)
        if origin is tuple:
            if isinstance(value, (str, bytes, dict, set)) or not isinstance(value, (Iterable, np.ndarray)):
                raise ValueError
            if isinstance(value, np.ndarray) and value.ndim != 1:
                raise ValueError
            return tuple(_scalar(v, args[0]) for v in value)
        return _scalar(value, hint)
    except ValueError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ConfigError(f"{what} must be {describe(hint)}, got {shown} ({type(value).__name__})") from None


def check_fields(obj: Any, owner: str, names: Iterable[str] | None = None) -> None:
    """Replace each field of the frozen dataclass ``obj`` (or only ``names``) by its checked, converted value.

    ``owner`` starts the message: ``"config field 'num_classes' must be an integer, got 'ten' (str)"``.
    """
    hints = _hints(type(obj))
    wanted = set(names) if names is not None else None
    for f in dataclasses.fields(obj):
        if wanted is None or f.name in wanted:
            value = coerce(getattr(obj, f.name), hints[f.name], f"{owner} field {f.name!r}")
            object.__setattr__(obj, f.name, value)
