"""Errors of the INT8 calibration stage (all user-facing: the CLI prints them and exits 2)."""
from __future__ import annotations

from ..errors import PSViTError


class CalibrationError(PSViTError):
    """A model, option or recipe that cannot be calibrated as asked."""


class CacheMismatchError(CalibrationError):
    """A calibration cache that belongs to another model (refused unless recalibration is forced)."""
