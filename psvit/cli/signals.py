"""SIGTERM unwinds like Ctrl-C: the CLI turns both into ``KeyboardInterrupt`` in the main thread, so every
``atomic_output`` removes its temporary file and every ``TemporaryDirectory`` its folder, whichever signal
stopped the command (Python's default SIGTERM ends the process on the spot, leaving both behind)."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

HANDLED = (signal.SIGINT, signal.SIGTERM)


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
