"""Shared rich consoles: results on stdout, progress and diagnostics on stderr.

Tables are as wide as ``COLUMNS`` says; output that is not a terminal (pipes, CI logs) and names no width is
rendered 140 columns wide so tables stay readable. Diagnostic lines on stderr are never wrapped (soft wrap:
the terminal folds them), so a path or a command in a message can be copied whole. Machines read ``--json``.
"""
import os
import sys

from rich.console import Console
from rich.markup import escape


def _width(stream) -> int | None:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        return int(columns)
    return None if stream.isatty() else 140


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr), soft_wrap=True)


def note(message: str) -> None:
    """A progress line on stderr (dim). Messages are text, never rich markup: ``[plot]`` stays ``[plot]``."""
    err_console.print(f"[dim]{escape(message)}[/]", highlight=False)


def say(message: str) -> None:
    """A plain line on stderr."""
    err_console.print(escape(message), highlight=False)


def warn(message: str, label: str = "warning:") -> None:
    err_console.print(f"[bold yellow]{label}[/] {escape(message)}", highlight=False)


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def format_bytes(n: int) -> str:
    """A file size for tables: kB below 100 kB, else MB."""
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
