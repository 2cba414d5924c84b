"""`psvit-export serve`: a real Triton server (PyTriton) on loopback, driven over HTTP and gRPC.

One server process for the module (started by the real CLI); the SIGTERM test runs last and stops it.
"""
from __future__ import annotations

import io
import json
import threading
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="the serve extra runs Triton (pip install 'psvit-deploy[serve]')")
http = pytest.importorskip("tritonclient.http", reason="Triton's client (pip install 'psvit-deploy[serve]')")
grpc = pytest.importorskip("tritonclient.grpc", reason="Triton's client (pip install 'psvit-deploy[serve]')")
from tritonclient.utils import InferenceServerException  # noqa: E402

from psvit.runtime import load  # noqa: E402
from serving_helpers import ServeProcess  # noqa: E402

pytestmark = pytest.mark.slow
REL = 1e-5


@pytest.fixture(scope="module")
def server(demo_fp32_onnx, tmp_path_factory):
    proc = ServeProcess(demo_fp32_onnx, "--max-batch", "16", "--instances", "2", "--max-queue-delay-ms", "2",
                        log_dir=tmp_path_factory.mktemp("serve"))
    try:
        proc.wait_ready()
        yield proc
    finally:
        if proc.proc.poll() is None:
            proc.terminate()


@pytest.fixture(scope="module")
def rt(demo_fp32_onnx):
    with load(demo_fp32_onnx) as runtime:
        yield runtime


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def _images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def _send(module, client, x: np.ndarray, request_id: str, model: str = "psvit", datatype: str = "FP32"):
    inp = module.InferInput("images", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp], request_id=request_id)
    rid = result.get_response().id if module is grpc else result.get_response()["id"]
    return result.as_numpy("logits"), rid


def _stats(server) -> dict:
    """Triton's statistics of ``psvit`` once two reads 50 ms apart agree (it records a request just after
    answering it); bounded to 5 s."""
    with http.InferenceServerClient(server.http) as client:
        last = None
        for _ in range(100):
            (entry,) = [m for m in client.get_inference_statistics("psvit")["model_stats"] if m["name"] == "psvit"]
            if entry == last:
                break
            last = entry
            time.sleep(0.05)
    return entry


def test_ready_info_and_health_and_metrics(server, rt):
    info = server.info
    assert info["models"] == ["psvit", "psvit_image"] and info["max_batch"] == 16 and info["dynamic_batching"]
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/psvit/ready", "/v2/models/psvit_image/ready"):
        with urllib.request.urlopen(f"http://{server.http}{path}", timeout=10) as resp:
            assert resp.status == 200
    meta = http.InferenceServerClient(server.http).get_model_metadata("psvit")
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, *rt.input_shape]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, len(rt.class_names)]}]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'nv_inference_request_success{model="psvit",version="1"}' in text


def test_concurrent_http_and_grpc_clients_each_get_their_own_answers(server, rt):
    """2,096 requests (1-3 rows each) from 64 concurrent clients, 32 per protocol: every answer is rt.infer of
    the rows sent, under the request's own id; none lost, none duplicated; Triton ran every row once."""
    import asyncio

    import tritonclient.grpc.aio as grpc_aio
    import tritonclient.http.aio as http_aio

    before = _stats(server)
    counts = {k: 29 + k % 9 for k in range(64)}  # 29..37 requests per client, 2,096 in all

    async def client_run(k: int) -> list:
        module, url = (http_aio, server.http) if k % 2 else (grpc_aio, server.grpc)
        client = module.InferenceServerClient(url)
        got = []
        try:
            for i in range(counts[k]):
                x = _images(1000 * k + i, 1 + (i + k) % 3)
                inp = module.InferInput("images", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                result = await client.infer("psvit", [inp], request_id=f"{k}-{i}")
                rid = result.get_response()["id"] if module is http_aio else result.get_response().id
                got.append((f"{k}-{i}", rid, x, result.as_numpy("logits")))
        finally:
            await client.close()
        return got

    async def all_clients() -> list:
        runs = await asyncio.wait_for(asyncio.gather(*(client_run(k) for k in counts)), timeout=300)
        return [r for run in runs for r in run]

    results = asyncio.run(all_clients())
    sent = [f"{k}-{i}" for k in counts for i in range(counts[k])]
    assert len(sent) >= 2000 and sorted(r[0] for r in results) == sorted(sent)
    assert all(rid == sid for sid, rid, _, _ in results)  # each answer came back to its own request
    x_all = np.concatenate([r[2] for r in results])
    ref = rt.infer(x_all)
    start = 0
    for _, _, x, out in results:
        assert out.shape == (len(x), 10)
        assert rel_err(out, ref[start:start + len(x)]) <= REL
        start += len(x)
    deadline = time.monotonic() + 60  # Triton records a request just after answering it
    after = _stats(server)
    while int(after["inference_count"]) - int(before["inference_count"]) < len(x_all) and time.monotonic() < deadline:
        time.sleep(0.05)
        after = _stats(server)
    executions = int(after["execution_count"]) - int(before["execution_count"])
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    assert inferences == len(x_all)  # every row ran exactly once
    assert executions < inferences  # multi-row requests; grouping itself: test_dynamic_batcher_groups_single_image_requests


def _png(seed: int, size=(40, 52)) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _send_image(client, data: bytes):
    inp = http.InferInput("image", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return client.infer("psvit_image", [inp])


def test_image_model_returns_the_runtimes_top_k(server, rt):
    from PIL import Image

    client = http.InferenceServerClient(server.http)
    for seed in range(3):
        data = _png(seed)
        result = _send_image(client, data)
        (expected,) = rt.predict(Image.open(io.BytesIO(data)), topk=5)
        assert [v.decode() for v in result.as_numpy("labels")[0]] == [p.name for p in expected]
        assert result.as_numpy("indices")[0].tolist() == [p.index for p in expected]
        np.testing.assert_allclose(result.as_numpy("probabilities")[0], [p.probability for p in expected], rtol=1e-5)


def test_bad_requests_get_triton_errors_and_others_are_unaffected(server, rt):
    """Wrong shape, wrong dtype, unknown model and corrupt image bytes fail alone while good traffic runs."""
    stop = threading.Event()
    good: list[tuple[np.ndarray, np.ndarray]] = []

    def good_traffic(k: int) -> None:
        client = http.InferenceServerClient(server.http)
        i = 0
        while not stop.is_set() and i < 400:
            x = _images(50_000 + 1000 * k + i, 2)
            good.append((x, _send(http, client, x, f"g{k}-{i}")[0]))
            i += 1

    threads = [threading.Thread(target=good_traffic, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        h = http.InferenceServerClient(server.http)
        g = grpc.InferenceServerClient(server.grpc)
        bad = [
            ("shape", lambda: _send(http, h, _images(1, 1)[:, :, :16, :16], "bad-shape")),
            ("channels", lambda: _send(grpc, g, np.zeros((1, 4, 32, 32), np.float32), "bad-channels")),
            ("dtype", lambda: _send(http, h, _images(2, 1).astype(np.float64), "bad-dtype", datatype="FP64")),
            ("model", lambda: _send(grpc, g, _images(3, 1), "bad-model", model="no_such_model")),
            ("image", lambda: _send_image(h, b"\x89PNG\r\n\x1a\n not really a png")),
        ]
        messages = {}
        for what, call in bad:
            with pytest.raises(InferenceServerException) as info:
                call()
            messages[what] = str(info.value)
        deadline = time.monotonic() + 60  # good traffic keeps running around the bad requests
        while len(good) < 8 and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert "no_such_model" in messages["model"] and "not a readable image" in messages["image"]
    assert "FP64" in messages["dtype"] or "datatype" in messages["dtype"].lower()
    assert len(good) >= 8
    x_all = np.concatenate([x for x, _ in good])
    ref = rt.infer(x_all)
    assert rel_err(np.concatenate([out for _, out in good]), ref) <= REL
    assert _send_image(http.InferenceServerClient(server.http), _png(7)).as_numpy("labels").shape == (1, 5)


def test_loadtest_sweeps_both_protocols_and_checks_every_response(server, rt, tmp_path):
    from psvit.cli import main
    from psvit.serve.loadgen import run_loadtest

    report = run_loadtest(server.grpc, protocol="grpc", concurrency=[1, 5], requests=23, batch=2, reference=rt)
    assert [lv.concurrency for lv in report.levels] == [1, 5]
    for lv in report.levels:
        assert lv.requests == 23 and lv.errors == 0 and lv.checked == 23 and lv.mismatches == 0
        assert lv.inferences == 46 and lv.server["inferences"] == 46  # Triton counted the same rows
        assert lv.latency["p50_ms"] <= lv.latency["p99_ms"]
    assert report.levels[1].server["avg_batch"] >= 1.0

    class Off:  # a reference that disagrees with the server: every response must count as a mismatch
        input_shape = rt.input_shape
        name = "off-by-1%"

        def infer(self, x):
            return rt.infer(x) * 1.01

    off = run_loadtest(server.http, concurrency=[3], requests=11, reference=Off())
    assert off.mismatches == 11
    timed = run_loadtest(server.http, concurrency=[2], duration=0.5, reference=rt)
    (lv,) = timed.levels
    assert lv.requests >= 1 and lv.checked == lv.requests and lv.mismatches == 0 and lv.errors == 0

    out = tmp_path / "sweep.json"
    code = main(["loadtest", server.http, "--concurrency", "2", "--requests", "9", "--reference",
                 str(rt.backend.path), "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["mismatches"] == 0 and data["levels"][0]["requests"] == 9 and data["machine"]["loadavg_start"]
    assert main(["loadtest", server.http, "--model", "nope", "--requests", "3"]) == 2  # a clear error, no traceback


def test_sigterm_drains_in_flight_requests_and_exits_zero(server, rt):
    """Runs last: SIGTERM while 16 clients have requests in flight; each of them is answered, exit code 0."""
    records: list[tuple[float, np.ndarray, object]] = []
    stop = threading.Event()
    started = threading.Barrier(17, timeout=60)
    answered = [threading.Event() for _ in range(16)]  # each client has sent (and got back) a request

    def client_loop(k: int) -> None:
        client = http.InferenceServerClient(server.http, network_timeout=120.0)
        started.wait()
        i = 0
        while not stop.is_set():
            x = _images(90_000 + 1000 * k + i, 1)
            t0 = time.monotonic()
            try:
                out = _send(http, client, x, f"s{k}-{i}")[0]
            except Exception as exc:  # noqa: BLE001 - refused after the signal is fine, checked below
                out = exc
            records.append((t0, x, out))
            answered[k].set()
            i += 1
        client.close()  # as a client that is done: Triton's shutdown waits for open HTTP connections

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    started.wait()
    for event in answered:  # all 16 clients are sending before the signal
        event.wait(60)
    t_signal = time.monotonic()
    stop.set()  # clients stop sending new requests, as a load balancer does when the pod terminates
    code = server.terminate(timeout=90)
    for t in threads:
        t.join(timeout=120)
    assert code == 0
    in_flight = [(x, out) for t0, x, out in records if t0 < t_signal]
    assert len(in_flight) >= 16
    failed = [out for _, out in in_flight if isinstance(out, Exception)]
    assert not failed, failed[:3]
    ref = rt.infer(np.concatenate([x for x, _ in in_flight]))
    assert rel_err(np.concatenate([out for _, out in in_flight]), ref) <= REL
    assert "in-flight requests answered" in server.log()


def test_dynamic_batcher_groups_single_image_requests(demo_fp32_onnx, rt, tmp_path):
    """Eight one-image requests in flight at once become fewer executions than requests: Triton's dynamic
    batcher grouped them. The queue delay (5 s) is a bound far above the time the eight take to arrive, so the
    grouping does not hinge on a race; the batch fills at --max-batch 8 and runs at once."""
    proc = ServeProcess(demo_fp32_onnx, "--max-batch", "8", "--max-queue-delay-ms", "5000", log_dir=tmp_path)
    try:
        proc.wait_ready()
        before = _stats(proc)
        start = threading.Barrier(8, timeout=60)
        answers: dict[int, np.ndarray] = {}

        def one(k: int) -> None:
            with http.InferenceServerClient(proc.http, network_timeout=60) as client:
                start.wait()
                answers[k], _ = _send(http, client, _images(k, 1), f"g{k}")

        threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads) and sorted(answers) == list(range(8))
        for k, out in answers.items():
            assert rel_err(out, rt.infer(_images(k, 1))) <= REL
        deadline = time.monotonic() + 60  # Triton records a request just after answering it
        after = _stats(proc)
        while int(after["inference_count"]) - int(before["inference_count"]) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
            after = _stats(proc)
        assert int(after["inference_count"]) - int(before["inference_count"]) == 8
        assert int(after["execution_count"]) - int(before["execution_count"]) < 8  # grouped
    finally:
        if proc.proc.poll() is None:
            proc.terminate()
