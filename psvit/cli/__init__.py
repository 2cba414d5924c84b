"""``psvit-export``: the command line. Each command lives in its own module and only wires library calls;
the modules register their commands when this package is imported, so ``psvit.cli.app`` is complete
(``typer.testing.CliRunner().invoke(psvit.cli.app, ["info"])`` works)."""
from __future__ import annotations

import errno
import sys

import typer

from ..errors import PSViTError

app = typer.Typer(
    name="psvit-export",
    help="PSViT deployment toolchain: model info, data, training, ONNX/FP16/INT8 export with verification, "
    "TensorRT engines, benchmarks, Triton serving and the end-to-end demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: compact at 80 columns, [default: ...] and choices shown
)


@app.callback()
def _root() -> None:
    """PSViT deployment toolchain."""


# Imported for their side effect of adding commands to ``app`` (after ``app`` exists).
from . import info, data, train, onnx, compare, inspect, trt, calibrate, bench, demo  # noqa: E402,F401
from . import predict, search, triton, serve, loadtest  # noqa: E402,F401


# The file system refusing a path the user gave, and what to do about it. Other OSErrors are bugs and keep
# their traceback.
_PATH_FIXES = {
    errno.ENAMETOOLONG: "use a shorter file or folder name",
    errno.EACCES: "check the permissions, or use a path you may read and write",
    errno.EPERM: "check the permissions, or use a path you may read and write",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "name a file, not a folder",
    errno.ELOOP: "the path has a loop of symbolic links",
}


def _path_error(exc: OSError) -> str:
    """One line for an OSError on a user's path: what the system said, the path (shortened), the fix."""
    name = str(exc.filename or "")
    short = name if len(name) <= 120 else f"{name[:60]}...{name[-40:]} ({len(name)} characters)"
    return f"{exc.strerror}: {short}; {_PATH_FIXES[exc.errno]}"


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one clear message and exit 2, never a traceback.

    Typer/click handle usage errors themselves (exit 2 with the usage line). Ctrl-C and SIGTERM unwind the
    same way (temporary files and folders removed) and exit 130 / 143 with one line.
    """
    from .console import error, say
    from .signals import signals_unwind, stop_note

    with signals_unwind() as received:
        try:
            app(args=argv, prog_name="psvit-export")
        # An error raised while a signal unwinds is the stop, reported below.
        except PSViTError as exc:
            if received.signum is None:
                error(str(exc))
                return 2
        except OSError as exc:
            if received.signum is None:
                if exc.errno not in _PATH_FIXES:
                    raise  # not about a path the user gave: a bug, with its traceback
                error(_path_error(exc))
                return 2
        except SystemExit as exc:  # click ends standalone runs with sys.exit (130 after KeyboardInterrupt)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except KeyboardInterrupt:  # raised outside click's handling (e.g. while the command module imports)
            code = 130
        else:
            code = 0
    if received.signum is not None:
        say(f"stopped by {received.name}; {stop_note()}")
        return received.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
