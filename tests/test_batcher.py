"""psvit.runtime.Batcher with real concurrent callers: threads and asyncio tasks."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from psvit.runtime import Batcher, BatcherClosedError, QueueFullError, RuntimeInputError, load

RNG = np.random.default_rng(1)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime runs the exported graph (pip install onnxruntime)")
    from psvit.export import export_onnx

    path = tmp_path_factory.getbasetemp() / "runtime_onnx" / "demo_dynamic.onnx"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        export_onnx("demo", path)
    return load(path)


def images(n: int) -> list[np.ndarray]:
    return [RNG.standard_normal((3, 32, 32), dtype=np.float32) for _ in range(n)]


def test_threads_each_get_their_own_result(runtime):
    inputs = images(240)
    expected = runtime.infer(np.stack(inputs))
    results: list[np.ndarray | None] = [None] * len(inputs)
    with Batcher(runtime, max_batch=16, max_delay_ms=5, max_queue=1000) as batcher:
        barrier = threading.Barrier(12)

        def client(k: int) -> None:
            barrier.wait()
            futures = [(i, batcher.submit(inputs[i], timeout=None)) for i in range(k, len(inputs), 12)]
            for i, f in futures:
                results[i] = f.result(timeout=30)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sizes = dict(batcher.batch_sizes)
    for got, want in zip(results, expected):
        assert got is not None and got.shape == (10,)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert sum(size * count for size, count in sizes.items()) == len(inputs)  # every request ran exactly once
    assert max(sizes) <= 16
    assert max(sizes) > 1  # requests were grouped under load


def test_asyncio_tasks(runtime):
    inputs = images(64)
    expected = runtime.infer(np.stack(inputs))

    async def main(batcher: Batcher) -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.asubmit(x) for x in inputs))

    with Batcher(runtime, max_batch=8, max_delay_ms=20, max_queue=100) as batcher:
        results = asyncio.run(main(batcher))
        sizes = dict(batcher.batch_sizes)
    np.testing.assert_allclose(np.stack(results), expected, rtol=0, atol=1e-5)
    assert max(sizes) <= 8 and max(sizes) > 1


def test_multi_image_requests_keep_their_rows(runtime):
    reqs = [RNG.standard_normal((n, 3, 32, 32), dtype=np.float32) for n in (1, 3, 2, 4, 5)]
    with Batcher(runtime, max_batch=6, max_delay_ms=20) as batcher:
        futures = [batcher.submit(x) for x in reqs]
        outs = [f.result(timeout=30) for f in futures]
        assert max(batcher.batch_sizes) <= 6
    for x, out in zip(reqs, outs):
        np.testing.assert_allclose(out, runtime.infer(x), rtol=0, atol=1e-5)


def test_a_failing_batch_fails_only_its_own_requests(runtime):
    def infer_unless_nan(x: np.ndarray) -> np.ndarray:
        if np.isnan(x).any():
            raise ValueError("NaN in the batch")
        return runtime.infer(x)

    good = images(8)
    poisoned = images(3) + [np.full((3, 32, 32), np.nan, np.float32)]
    with Batcher(infer_unless_nan, max_batch=4, max_delay_ms=500) as batcher:
        first = [batcher.submit(x) for x in good[:4]]  # a full batch: runs at once
        assert all(f.result(timeout=30) is not None for f in first)
        bad = [batcher.submit(x) for x in poisoned]
        for f in bad:
            with pytest.raises(ValueError, match="NaN"):
                f.result(timeout=30)
        after = [batcher.submit(x) for x in good[4:]]
        outs = [f.result(timeout=30) for f in after]
    np.testing.assert_allclose(np.stack(outs), runtime.infer(np.stack(good[4:])), rtol=0, atol=1e-5)


def test_full_queue_pushes_back():
    started, release = threading.Event(), threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        started.set()
        release.wait(30)
        return x.sum(axis=(1, 2, 3))

    batcher = Batcher(slow, max_batch=1, max_delay_ms=0, max_queue=2)
    try:
        busy = batcher.submit(np.ones((3, 4, 4), np.float32))
        assert started.wait(10)  # the worker holds the first request; the queue is empty
        queued = [batcher.submit(np.full((3, 4, 4), v, np.float32)) for v in (2.0, 3.0)]
        with pytest.raises(QueueFullError, match="queue is full"):
            batcher.submit(np.ones((3, 4, 4), np.float32))
        t0 = time.perf_counter()
        with pytest.raises(QueueFullError):
            batcher.submit(np.ones((3, 4, 4), np.float32), timeout=0.05)
        assert time.perf_counter() - t0 >= 0.04  # it waited for room before giving up
        release.set()
        assert busy.result(timeout=10) == 48.0
        assert [f.result(timeout=10) for f in queued] == [96.0, 144.0]
    finally:
        release.set()
        batcher.close()


def test_close_drains_then_refuses(runtime):
    inputs = images(20)
    batcher = Batcher(runtime, max_batch=32, max_delay_ms=10_000)  # would wait 10 s for a full batch
    futures = [batcher.submit(x) for x in inputs]
    t0 = time.perf_counter()
    batcher.close()  # drains at once instead of waiting out the delay
    assert time.perf_counter() - t0 < 5
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(BatcherClosedError):
        batcher.submit(inputs[0])
    batcher.close()  # idempotent


def test_bad_requests_are_refused_at_submit(runtime):
    with Batcher(runtime, max_batch=4) as batcher:
        with pytest.raises(RuntimeInputError, match=r"expects float32 \(N, 3, 32, 32\)"):
            batcher.submit(np.zeros((3, 16, 16), np.float32))
        with pytest.raises(RuntimeInputError, match="exceeds max_batch=4"):
            batcher.submit(np.zeros((5, 3, 32, 32), np.float32))
    with pytest.raises(RuntimeInputError, match="max_batch"):
        Batcher(runtime, max_batch=0)
