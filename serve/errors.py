"""Errors of the serving tools; all are :class:`psvit.errors.PSViTError`, so the CLI prints them without a traceback."""
from __future__ import annotations

from ..errors import PSViTError


class ServeError(PSViTError):
    """An artifact, repository or option that cannot be served as asked; the message says what fits."""


class LoadTestError(PSViTError):
    """A load test that cannot run (unreachable server, unknown model, bad option)."""
