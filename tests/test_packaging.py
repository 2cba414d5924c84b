"""pyproject.toml ships every package folder and every data file of the source tree (no wheel build).

A wheel holds exactly the packages listed in ``[tool.setuptools] packages`` and the files matched by
``package-data``; an editable install imports everything regardless. So a new subpackage or asset that is
not listed works in every test here and is missing after ``pip install psvit-deploy``. These tests walk the
source folders named in ``package-dir`` and compare them with what pyproject declares, both ways.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")

ROOT = Path(__file__).resolve().parents[1]
# Top-level folders with Python code that are deliberately not installed.
NOT_INSTALLED = {"tests", "benchmarks", "scripts", "examples", "build", "dist"}


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _skip(path: Path) -> bool:
    return path.name.startswith(".") or path.name == "__pycache__" or path.name.endswith(".egg-info")


def _walk(folder: Path):
    """``folder`` and every folder below it, hidden folders and caches excluded."""
    yield folder
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not _skip(child):
            yield from _walk(child)


def source_packages() -> dict[str, Path]:
    """Dotted name -> folder of every folder under a ``package-dir`` root that holds files (code or data).

    A nested mapping (``psvit.export`` -> ``export/``) wins over the folder its parent would give.
    """
    mapping: dict[str, str] = _setuptools()["package-dir"]
    found: dict[str, Path] = {}
    for name, rel in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        base = ROOT / rel
        for folder in _walk(base):
            if not any(f.is_file() and not _skip(f) for f in folder.iterdir()):
                continue  # an empty folder ships nothing
            parts = folder.relative_to(base).parts
            found[".".join((name, *parts))] = folder
    return found


def test_every_package_folder_is_listed_in_pyproject():
    declared = set(_setuptools()["packages"])
    found = source_packages()
    missing = sorted(set(found) - declared)
    assert not missing, (
        f"folders {[str(found[m].relative_to(ROOT)) for m in missing]} are not in pyproject.toml "
        f"[tool.setuptools] packages: a wheel install would lack {missing}"
    )
    stale = sorted(declared - set(found))
    assert not stale, f"pyproject.toml lists packages with no folder (or an empty one): {stale}"


def test_code_folders_are_regular_packages():
    """A folder with modules but no ``__init__.py`` is a namespace package: easy to miss, never intended here."""
    bare = [str(folder.relative_to(ROOT)) for folder in source_packages().values()
            if any(folder.glob("*.py")) and not (folder / "__init__.py").is_file()]
    assert not bare, f"add an __init__.py to {bare}"


def _shipped(f: Path, folders: dict[str, Path], package_data: dict[str, list[str]]) -> bool:
    """Whether a package-data pattern matches ``f``: setuptools matches a package's patterns against paths
    relative to that package's folder (``"*"``: every package's own folder)."""
    for name, patterns in package_data.items():
        base = f.parent if name == "*" else folders.get(name)
        if base is None or base not in f.parents:
            continue
        rel = f.relative_to(base).as_posix()
        if any(fnmatch.fnmatch(rel, pattern) for pattern in patterns):
            return True
    return False


def test_every_data_file_is_matched_by_package_data():
    package_data: dict[str, list[str]] = _setuptools().get("package-data", {})
    folders = source_packages()
    unshipped = [
        str(f.relative_to(ROOT))
        for folder in folders.values() for f in sorted(folder.iterdir())
        if f.is_file() and not _skip(f) and f.suffix != ".py" and not _shipped(f, folders, package_data)
    ]
    assert not unshipped, f"not matched by pyproject.toml [tool.setuptools.package-data]: {unshipped}"


def test_every_top_level_code_folder_is_installed_or_deliberately_not():
    mapped = {Path(rel).parts[0] for rel in _setuptools()["package-dir"].values()}
    unmapped = sorted(
        p.name for p in ROOT.iterdir()
        if p.is_dir() and not _skip(p) and p.name not in mapped | NOT_INSTALLED and any(p.rglob("*.py"))
    )
    assert not unmapped, (
        f"top-level folders {unmapped} hold Python code but are not in pyproject.toml's package-dir; map them "
        f"(e.g. \"psvit.x\" = \"x\") or add them to NOT_INSTALLED in {Path(__file__).name}"
    )


def test_license_file_and_metadata_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    for name in project["license-files"]:
        text = (ROOT / name).read_text()
        assert "Apache License" in text and "Version 2.0, January 2004" in text

