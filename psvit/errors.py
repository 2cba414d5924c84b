"""One exception hierarchy for user-facing errors; every message says what to do about it.

Each failure kind has one class, raised wherever that failure happens (no error classes are passed around
as arguments): an artifact that cannot be read is an :class:`ArtifactError`, an output that cannot be
written an :class:`OutputPathError`, and so on. The stages add their own kinds (``psvit.export.errors``,
``psvit.calibration.errors``, ``psvit.runtime.errors``).
"""
from __future__ import annotations


class PSViTError(Exception):
    """Base class of errors caused by user input; the CLI prints them without a traceback."""


class UnknownVariantError(PSViTError, KeyError):
    """A variant name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(PSViTError, ValueError):
    """A configuration outside the PSViT compact set, or inconsistent options."""


class CheckpointError(PSViTError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


class DataError(PSViTError):
    """Missing, empty or unreadable image data."""


class ArtifactError(PSViTError):
    """An artifact that cannot be used: missing, truncated, corrupt, of an unknown kind, or an engine whose
    sidecar is missing, corrupt or describes another plan."""


class OutputPathError(PSViTError):
    """An output that cannot be written: its folder is missing or read-only, or a folder stands where a file
    should be written."""


class MissingDependencyError(PSViTError, ImportError):
    """An optional dependency is not installed; the message names the pip command."""


def require(module: str, pip_name: str | None = None, purpose: str = ""):
    """Import an optional dependency, or raise a MissingDependencyError naming the pip command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pip_name = pip_name or module.split(".")[0]
        why = f" (needed for {purpose})" if purpose else ""
        raise MissingDependencyError(
            f"'{module}' is not installed{why}. Install it with: pip install {pip_name}"
        ) from exc
