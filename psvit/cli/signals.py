"""SIGTERM unwinds like Ctrl-C: the CLI turns both into ``KeyboardInterrupt`` in the main thread, so every
``atomic_output`` removes its temporary file and every ``TemporaryDirectory`` its folder, whichever signal
stopped the command (Python's default SIGTERM ends the process on the spot, leaving both behind).

Native code that calls back into Python swallows an exception raised there: a handler that fires inside
TensorRT's logger or progress monitor would not stop the build. So the engine build holds these signals
back while TensorRT runs (it cancels through its progress monitor) and then calls this handler with the
signal, which raises as usual (``psvit.export.tensorrt.build``; the export layer cannot import the CLI)."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

HANDLED = (signal.SIGINT, signal.SIGTERM)
# What a command keeps on purpose when it is stopped (a prediction file's finished rows), said instead of
# "nothing half-written was kept"; set with :func:`on_stop_say`, cleared by each :func:`signals_unwind`.
_STOP_NOTE: list[str] = []


def on_stop_say(note: str) -> None:
    """What to tell the user if the command is stopped from now on (e.g. which rows were kept)."""
    _STOP_NOTE[:] = [note]


def stop_note() -> str:
    return _STOP_NOTE[0] if _STOP_NOTE else "nothing half-written was kept"


@dataclass
class Received:
    """The signal that stopped the command, if any."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as shells report a process ended by that signal (130, 143)."""
        return 128 + (self.signum or 0)


@contextlib.contextmanager
def signals_unwind() -> Iterator[Received]:
    """Within the block, SIGINT and SIGTERM raise ``KeyboardInterrupt`` (once: a second signal while the
    first one unwinds is ignored, so the clean-up finishes). Outside the main thread: nothing changes."""
    received = Received()
    _STOP_NOTE.clear()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: object) -> None:
        if received.signum is not None:
            return  # already unwinding: let the clean-up finish
        received.signum = signum
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
