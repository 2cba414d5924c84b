"""Progress, speed and memory of a calibration run: images/s and time left per pass, and the peak RSS."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class CalibrationProgress:
    """``done`` of ``total`` images through pass ``step`` of ``steps`` (``stage``: ``ranges`` or
    ``histograms``), at ``images_per_s`` so far in this pass; ``eta_s``: seconds left in this pass."""

    stage: str
    step: int
    steps: int
    done: int
    total: int
    elapsed_s: float
    images_per_s: float
    eta_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[CalibrationProgress], None]


class PassMeter:
    """Counts the images of one pass and reports each batch to ``callback``."""

    def __init__(self, stage: str, step: int, steps: int, total: int, callback: ProgressCallback | None) -> None:
        self.stage, self.step, self.steps, self.total, self.callback = stage, step, steps, total, callback
        self.done = 0
        self.start = time.perf_counter()

    def advance(self, images: int) -> None:
        self.done += images
        if self.callback is None:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        self.callback(CalibrationProgress(self.stage, self.step, self.steps, self.done, self.total, elapsed,
                                          rate, eta))


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (``getrusage``: KiB on Linux, bytes on macOS; 0 where
    the ``resource`` module does not exist, e.g. Windows)."""
    try:
        import resource
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
