"""examples/fastapi_app.py: a real uvicorn server on loopback, a real HTTP client, answers vs Runtime.predict."""
from __future__ import annotations

import importlib.util
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="pip install 'psvit-deploy[examples]'")
uvicorn = pytest.importorskip("uvicorn", reason="pip install 'psvit-deploy[examples]'")
httpx = pytest.importorskip("httpx", reason="pip install 'psvit-deploy[test]'")

from psvit.runtime import load  # noqa: E402
from serving_helpers import free_ports  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_app.py"


@pytest.fixture(scope="module")
def service(demo_fp32_onnx):
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (port,) = free_ports(1)
    server = uvicorn.Server(uvicorn.Config(module.create_app(str(demo_fp32_onnx), max_batch=8, max_delay_ms=5),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start within 60 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30 + seed, 41, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_concurrent_requests_get_the_runtimes_top_k_and_are_batched(service, demo_fp32_onnx):
    from PIL import Image

    images = [_png(s) for s in range(23)]
    with httpx.Client(base_url=service, timeout=60) as client:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: client.post("/v1/predict?topk=3", content=b,
                                                          headers={"Content-Type": "image/png"}), images))
        health = client.get("/healthz").json()
    with load(demo_fp32_onnx) as rt:
        expected = rt.predict([Image.open(io.BytesIO(b)) for b in images], topk=3)
    for resp, exp in zip(answers, expected):
        assert resp.status_code == 200
        got = resp.json()["predictions"]
        assert [(p["index"], p["label"]) for p in got] == [(p.index, p.name) for p in exp]
        np.testing.assert_allclose([p["probability"] for p in got], [p.probability for p in exp], rtol=1e-5)
    sizes = {int(k): v for k, v in health["batch_sizes"].items()}
    assert sum(k * v for k, v in sizes.items()) == len(images)  # every image ran exactly once


def test_bad_uploads_get_400_and_do_not_break_the_service(service):
    with httpx.Client(base_url=service, timeout=60) as client:
        bad = client.post("/v1/predict", content=b"not an image", headers={"Content-Type": "image/png"})
        assert bad.status_code == 400 and "not a readable image" in bad.json()["error"]
        assert client.post("/v1/predict?topk=0", content=_png(1)).status_code == 422
        ok = client.post("/v1/predict", content=_png(2))
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 5
