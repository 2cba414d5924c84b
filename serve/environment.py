"""The process environment Triton's Python backend needs: this interpreter's own ``libpython`` first.

Triton starts one ``triton_python_backend_stub`` per Python model instance; the stub links
``libpython3.X.so`` through the dynamic loader. With an interpreter built outside the system (pyenv, conda,
a venv over either) the loader finds the system's library of another patch release, or none: model loading
then fails with ``'_thread.RLock' object has no attribute '_recursion_count'`` (3.11.7 stub on the system's
3.11.2) or ``libpython3.12.so.1.0: cannot open shared object file`` (and the load hangs). Putting
``sysconfig``'s ``LIBDIR`` of the running interpreter first on ``LD_LIBRARY_PATH`` fixes both. PyTriton
copies ``os.environ`` when it starts ``tritonserver``, so setting it in this process before the start is
enough; the dynamic loader of this process is not affected (it read the variable at start-up).
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path


def libpython_dir() -> str | None:
    """The folder of the running interpreter's shared ``libpython`` (None for a static build without one)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if not libdir or not (ldlib.endswith(".so") or ".so." in ldlib):
        return None
    return libdir if (Path(libdir) / ldlib).exists() else None


def with_libpython_first(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the interpreter's ``libpython`` folder first on ``LD_LIBRARY_PATH`` (once)."""
    libdir = libpython_dir()
    if libdir is None:
        return env
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    return {**env, "LD_LIBRARY_PATH": os.pathsep.join([libdir, *parts])}


def prepare_process_environment() -> None:
    """Set :func:`with_libpython_first` on this process's environment, which PyTriton hands to tritonserver."""
    os.environ.update(with_libpython_first(dict(os.environ)))
