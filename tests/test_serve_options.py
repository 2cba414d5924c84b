"""Serving pieces that need no server: option checks, the libpython environment, statistics arithmetic."""
from __future__ import annotations

import os
import socket
import sysconfig

import pytest

from psvit.serve import LoadTestError, ServeError
from psvit.serve.environment import libpython_dir, with_libpython_first
from psvit.serve.loadgen import parse_concurrency, run_loadtest, server_split
from psvit.serve.server import ServeOptions


def test_libpython_goes_first_once():
    libdir = libpython_dir()
    if libdir is None:
        pytest.skip("this interpreter has no shared libpython")
    assert libdir == sysconfig.get_config_var("LIBDIR")
    env = with_libpython_first({"LD_LIBRARY_PATH": f"/opt/x{os.pathsep}{libdir}{os.pathsep}/opt/y"})
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [libdir, "/opt/x", "/opt/y"]
    assert with_libpython_first(env) == env
    assert with_libpython_first({})["LD_LIBRARY_PATH"] == libdir


@pytest.mark.parametrize("options, message", [
    (ServeOptions(http_port=8000, grpc_port=8000), "must differ"),
    (ServeOptions(metrics_port=70000), "not a TCP port"),
    (ServeOptions(max_batch=0), "--max-batch"),
    (ServeOptions(max_queue_delay_ms=-1), "--max-queue-delay-ms"),
    (ServeOptions(instances=0), "--instances"),
    (ServeOptions(topk=0), "--topk"),
])
def test_serve_options_are_checked(options, message):
    with pytest.raises(ServeError, match=message):
        options.check()


def test_loadtest_options_are_checked():
    assert parse_concurrency("16,1,16,4") == [16, 1, 4]
    for bad in ("", "0", "1,x"):
        with pytest.raises(LoadTestError, match="--concurrency"):
            parse_concurrency(bad)
    with pytest.raises(LoadTestError, match="not both"):
        run_loadtest("localhost:1", requests=3, duration=1.0)
    with pytest.raises(LoadTestError, match="--batch"):
        run_loadtest("localhost:1", batch=0)


def test_server_split_divides_by_requests_and_executions():
    before = {"executions": 10, "inferences": 40, "success_count": 40, "success_ns": 0, "fail_count": 0,
              "fail_ns": 0, "queue_count": 40, "queue_ns": 4_000_000, "compute_input_count": 10,
              "compute_input_ns": 0, "compute_infer_count": 10, "compute_infer_ns": 0, "compute_output_count": 10,
              "compute_output_ns": 0}
    after = {**before, "executions": 15, "inferences": 70, "success_count": 70, "queue_ns": 7_000_000,
             "compute_infer_ns": 60_000_000}
    split = server_split(before, after)
    assert split["requests"] == 30 and split["executions"] == 5 and split["avg_batch"] == 6.0
    assert split["queue_ms"] == pytest.approx(0.1) and split["compute_infer_ms"] == pytest.approx(2.0)


def test_unreachable_server_is_a_clear_error():
    pytest.importorskip("tritonclient.http", reason="pip install 'psvit-deploy[serve]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(LoadTestError, match="cannot reach model 'psvit'"):
            run_loadtest(f"127.0.0.1:{port}", concurrency=[1], requests=1, input_shape=(3, 32, 32))


def test_serve_refuses_a_taken_port(demo_fp32_onnx, capsys):
    pytest.importorskip("pytriton", reason="pip install 'psvit-deploy[serve]'")
    from psvit.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["serve", str(demo_fp32_onnx), "--host", "127.0.0.1", "--http-port", str(port),
                     "--grpc-port", str(port + 1 if port < 65535 else port - 1), "--metrics-port", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"--http-port {port} on 127.0.0.1 is taken" in err and "Traceback" not in err
