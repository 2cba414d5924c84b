"""The public surface of the CLI: commands registered at import, one spelling per option (old spellings are
hidden aliases that warn), Enum choices that match the library, help that fits 80 columns with defaults."""
from __future__ import annotations

import enum
import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import psvit
import psvit.cli
from psvit.cli.options import BackendChoice, BuilderChoice, CalibMethod, SharedAttention


def commands() -> dict[str, Any]:
    """Every leaf command by its full name ("trt", "data synthetic"); typer's click objects."""
    root = typer.main.get_command(psvit.cli.app)
    out = {}

    def walk(group: Any, prefix: str) -> None:
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, f"{prefix}{name} ")
            else:
                out[f"{prefix}{name}"] = cmd

    walk(root, "")
    return out


def options(cmd: Any) -> list[Any]:
    return [p for p in cmd.params if p.param_type_name == "option"]


def test_commands_are_registered_at_import():
    result = CliRunner().invoke(psvit.cli.app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    assert [v["name"] for v in json.loads(result.output)] == psvit.list_models()
    assert {"info", "onnx", "trt", "calibrate", "compare", "bench", "demo", "inspect", "train",
            "data synthetic"} <= set(commands())


def test_one_spelling_per_option():
    visible: dict[str, set[str]] = {}
    hidden: set[str] = set()
    for name, cmd in commands().items():
        for p in options(cmd):
            (hidden if p.hidden else visible.setdefault(name, set())).update(p.opts)
    assert hidden == {"--opt-level", "--method", "--cache", "--report"}  # old spellings: hidden, they warn
    assert {"--optimization-level", "--builder", "--calib-method", "--calib-cache"} <= visible["trt"]
    assert {"--calib-method", "--calib-cache", "--json", "--variant"} <= visible["calibrate"]
    assert "--json" in visible["onnx"] and "--json" in visible["compare"] and "--json" in visible["bench"]
    everywhere = set().union(*visible.values())
    assert not everywhere & {"--opt-level", "--method", "--cache", "--report", "--flavour"}


def test_choices_are_the_librarys():
    from psvit.calibration.methods import METHODS
    from psvit.export.sharing import SHARE_CHOICES
    from psvit.export.tensorrt import BUILDERS
    from psvit.runtime.backends import BACKENDS
    from psvit.runtime.tensorrt import normalise_flavour

    assert tuple(m.value for m in CalibMethod) == METHODS
    assert tuple(s.value for s in SharedAttention) == tuple(SHARE_CHOICES)
    assert tuple(normalise_flavour(b.value) for b in BuilderChoice) == BUILDERS
    assert tuple(b.value for b in BackendChoice) == ("auto", *BACKENDS)


@pytest.mark.parametrize("name", sorted(commands()))
def test_help_fits_80_columns_with_defaults_and_choices(name):
    result = CliRunner().invoke(psvit.cli.app, [*name.split(), "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    flat = " ".join(result.output.split())
    for p in options(commands()[name]):
        if not p.hidden and not p.is_flag and p.default not in (None, ()):
            assert f"[default: {p.default.value if hasattr(p.default, 'value') else p.default}" in flat, (name, p.name)
        if not p.hidden and isinstance(p.default, enum.Enum):  # Enum options list their choices
            assert "|".join(e.value for e in type(p.default)) in result.output, (name, p.name)


def test_old_spellings_still_work_and_warn(tmp_path, capsys):
    code = psvit.cli.main(["trt", "demo", "--out", str(tmp_path / "m.engine"), "--opt-level", "7"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "--opt-level is deprecated; use --optimization-level" in err
    assert "--optimization-level must be 0..5, got 7" in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("columns", [60, 200])
def test_console_honours_columns_and_never_wraps_messages(columns, tmp_path):
    """Tables are as wide as COLUMNS says; an error message stays one line (a path in it can be copied)."""
    import subprocess
    import sys

    env = {"COLUMNS": str(columns), "PATH": "/usr/bin:/bin"}
    table = subprocess.run([sys.executable, "-m", "psvit.cli", "info"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert table.returncode == 0, table.stderr
    widths = [len(line) for line in table.stdout.splitlines()]
    assert max(widths) <= columns and (columns < 100 or max(widths) > 100), widths
    long_path = tmp_path / ("x" * 80) / "ds"
    error = subprocess.run([sys.executable, "-m", "psvit.cli", "data", "synthetic", "--out", str(long_path),
                            "--count", "5", "--seed", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert error.returncode == 2
    (line,) = error.stderr.splitlines()
    assert str(long_path.parent) in line and "mkdir -p" in line
