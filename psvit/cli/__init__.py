"""``psvit-export``: the command line. Each command lives in its own module and only wires library calls."""
from __future__ import annotations

import sys

import typer

from ..errors import PSViTError

app = typer.Typer(
    name="psvit-export",
    help="PSViT deployment toolchain: model info, data, training, ONNX/FP16/INT8 export with verification, "
    "TensorRT engines, benchmarks and the end-to-end demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from . import info  # noqa: F401
    from . import data  # noqa: F401
    from . import train  # noqa: F401
    from . import onnx  # noqa: F401
    from . import compare  # noqa: F401
    from . import inspect  # noqa: F401
    from . import trt  # noqa: F401
    from . import calibrate  # noqa: F401
    from . import bench  # noqa: F401
    from . import demo  # noqa: F401
    from . import search  # noqa: F401


@app.callback()
def _root() -> None:
    """PSViT deployment toolchain."""


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one clear message and exit 2, never a traceback.

    Typer/click handle usage errors themselves (exit 2 with the usage line).
    """
    from .console import err_console

    _register_commands()
    try:
        app(args=argv, prog_name="psvit-export")
    except PSViTError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except SystemExit as exc:  # click ends standalone runs with sys.exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
