"""Helpers of the serving tests: free loopback ports and a `psvit-export serve` process with bounded waits."""
from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (the OS picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class _LoggedProcess:
    """A child process whose output goes to ``log_path``; stopped by a signal, killed after a bounded wait."""

    proc: subprocess.Popen
    log_path: Path
    _log: Any

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()[-4000:]

    def _stop(self, sig: int, timeout: float) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        finally:
            self._log.close()


class ServeProcess(_LoggedProcess):
    """``python -m psvit.cli serve ARTIFACT --json`` on free loopback ports; :meth:`wait_ready` is bounded."""

    def __init__(self, artifact: str | Path, *extra: str, log_dir: Path) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.log_path = log_dir / "serve.stderr"
        cmd = [sys.executable, "-m", "psvit.cli", "serve", str(artifact), "--host", "127.0.0.1",
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", str(self.metrics_port), "--log-file", str(log_dir / "tritonserver.log"), "--json",
               *extra]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.info: dict[str, Any] = {}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 180.0) -> dict[str, Any]:
        """The ``--json`` line the server prints once its models are loaded (other stdout lines are skipped)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise TimeoutError(f"serve not ready after {timeout} s; log: {self.log()}") from None
            if line is None:
                raise RuntimeError(f"serve exited with {self.proc.wait(10)} before it was ready; log: {self.log()}")
            if line.startswith("{"):
                self.info = json.loads(line)
                return self.info

    def terminate(self, timeout: float = 90.0) -> int:
        """SIGTERM, then the exit code (bounded; killed after ``timeout``)."""
        return self._stop(signal.SIGTERM, timeout)


class BundledTritonServer(_LoggedProcess):
    """The ``tritonserver`` binary that nvidia-pytriton ships, run over a model repository on loopback.

    It has the Python backend and ensembles but no ONNX Runtime or TensorRT backend, so tests use it for
    the Python-backend models and ensembles that ``psvit-export triton`` writes. The process environment is
    the one :func:`psvit.serve.environment.with_libpython_first` makes (the interpreter's libpython first).
    """

    def __init__(self, repo: Path, work: Path) -> None:
        import os
        import shutil

        from pytriton.triton import TRITONSERVER_DIST_DIR
        from pytriton.utils.distribution import get_libs_path, get_stub_path

        from psvit.serve.environment import with_libpython_first

        dist = work / "tritonserver"
        shutil.copytree(TRITONSERVER_DIST_DIR, dist, ignore=shutil.ignore_patterns("python_backend_stubs"))
        stub = get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}")
        shutil.copy(stub, dist / "backends" / "python" / "triton_python_backend_stub")
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (env.get("LD_LIBRARY_PATH"), str(get_libs_path())) if p)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the stub runs this venv's python
        self.log_path = work / "tritonserver.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(dist / "bin" / "tritonserver"), f"--model-repository={repo}",
             f"--backend-directory={dist / 'backends'}",
             "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
             f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
             "--exit-timeout-secs=10"],
            stdout=self._log, stderr=subprocess.STDOUT, env=with_libpython_first(env),
        )

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def wait_ready(self, models: list[str], timeout: float = 120.0) -> None:
        import time

        import tritonclient.http as http

        deadline = time.monotonic() + timeout
        with http.InferenceServerClient(self.http) as client:  # closed: Triton's shutdown waits for connections
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"tritonserver exited with {self.proc.returncode}: {self.log()}")
                try:
                    if all(client.is_model_ready(m) for m in models):
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.25)
        raise TimeoutError(f"models {models} not ready after {timeout} s: {self.log()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGINT (Triton's own shutdown), then the exit code (bounded)."""
        return self._stop(signal.SIGINT, timeout)
