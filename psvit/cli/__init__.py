"""``psvit-export``: the command line. Each command lives in its own module and only wires library calls;
the modules register their commands when this package is imported, so ``psvit.cli.app`` is complete
(``typer.testing.CliRunner().invoke(psvit.cli.app, ["info"])`` works)."""
from __future__ import annotations

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


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one clear message and exit 2, never a traceback.

    Typer/click handle usage errors themselves (exit 2 with the usage line).
    """
    from rich.markup import escape

    from .console import err_console

    try:
        app(args=argv, prog_name="psvit-export")
    except PSViTError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)  # keep [extras] in pip hints
        return 2
    except SystemExit as exc:  # click ends standalone runs with sys.exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
