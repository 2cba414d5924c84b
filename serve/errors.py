"""Errors of the serving tools; all are :class:`psvit.errors.PSViTError`, so the CLI prints them without a traceback."""
from __future__ import annotations

from collections.abc import Iterable

from ..errors import PSViTError


class ServeError(PSViTError):
    """An artifact, repository or option that cannot be served as asked; the message says what fits."""


class LoadTestError(PSViTError):
    """A load test that cannot run (unreachable server, unknown model, bad option)."""


def check_at_least(checks: Iterable[tuple[str, float | None, float]], error: type[PSViTError] = ServeError) -> None:
    """Raise ``error`` for the first ``(option, value, minimum)`` whose value (None: not set) is below the minimum."""
    for option, value, minimum in checks:
        if value is not None and value < minimum:
            raise error(f"{option} must be at least {minimum}, got {value}")
