"""TensorRT's messages, routed to :mod:`logging` (logger ``psvit.tensorrt``) and kept per build or load.

TensorRT keeps the first ``ILogger`` a process gives it, so there is one logger per TensorRT module. Its
messages go to ``logging`` at the matching level and to the :func:`capture` blocks that are open: a block
sees the messages of its own thread, and those TensorRT logs from its worker threads. Each capture holds at
most ``limit`` messages, so a service that loads engines for days keeps nothing, and two concurrent builds
never clear each other's messages.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

LOG = logging.getLogger("psvit.tensorrt")
CAPTURE_LIMIT = 200  # messages kept per build or load (the last ones)
_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG}
_WARNING = 2  # ILogger.Severity.WARNING: captures keep this and worse

_loggers: dict[str, Any] = {}
_captures: dict[int, list["LogCapture"]] = {}  # thread id -> open captures of that thread
_lock = threading.Lock()


class LogCapture:
    """The warnings and errors TensorRT reported during one build or load (at most ``limit``, the last ones)."""

    def __init__(self, limit: int = CAPTURE_LIMIT) -> None:
        self._messages: collections.deque[str] = collections.deque(maxlen=limit)

    def add(self, text: str) -> None:
        self._messages.append(text)

    @property
    def messages(self) -> list[str]:
        return list(self._messages)

    def tail(self, n: int = 10) -> str:
        """The last ``n`` messages, one per line, for error messages."""
        return "\n  ".join(self.messages[-n:]) or "(TensorRT reported nothing)"


def _deliver(severity: int, text: str) -> None:
    LOG.log(_LEVELS.get(severity, logging.INFO), "%s", text)
    if severity > _WARNING:
        return
    with _lock:
        own = _captures.get(threading.get_ident())
        targets = own if own else [c for caps in _captures.values() for c in caps]  # TensorRT's own threads
        for capture in targets:
            capture.add(text)


def trt_logger(trt: ModuleType, flavour: str) -> Any:
    """The process's ``ILogger`` for the TensorRT module ``trt`` (created once per module)."""
    if flavour not in _loggers:

        class RoutingLogger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                _deliver(int(severity), f"{getattr(severity, 'name', severity)}: {msg}")

        _loggers[flavour] = RoutingLogger()
    return _loggers[flavour]


@contextlib.contextmanager
def capture(limit: int = CAPTURE_LIMIT) -> Iterator[LogCapture]:
    """Collect TensorRT's warnings and errors of this block (see the module docstring)."""
    cap = LogCapture(limit)
    ident = threading.get_ident()
    with _lock:
        _captures.setdefault(ident, []).append(cap)
    try:
        yield cap
    finally:
        with _lock:
            caps = _captures[ident]
            caps.remove(cap)
            if not caps:
                del _captures[ident]
