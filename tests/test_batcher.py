"""psvit.runtime.Batcher with real concurrent callers (threads, asyncio tasks) and injected faults.

No test depends on timing: where grouping matters, the target blocks on an Event while requests queue up
behind it, so what forms a batch is decided by the queue, not by a time window. Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from psvit.runtime import (
    Batcher, BatcherClosedError, BatcherTargetError, QueueFullError, RuntimeInputError, load,
)

RNG = np.random.default_rng(1)
WAIT = 30  # seconds: the bound of every wait; reaching it means a hang


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime runs the exported graph (pip install onnxruntime)")
    from psvit.export import export_onnx

    path = tmp_path_factory.getbasetemp() / "runtime_onnx" / "demo_dynamic.onnx"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        export_onnx("demo", path)
    return load(path)


def images(n: int, shape: tuple[int, ...] = (3, 32, 32)) -> list[np.ndarray]:
    return [RNG.standard_normal(shape, dtype=np.float32) for _ in range(n)]


def row_sums(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).sum(axis=1)  # (N, C, H, W) -> (N,)


class Gated:
    """A target that records each call and whose first call waits for :attr:`release`.

    While the worker waits inside the first call, later requests queue up; releasing it lets the worker
    form batches from what is queued: deterministic grouping without time windows.
    """

    def __init__(self, fn: Callable[[np.ndarray], object] = row_sums) -> None:
        self.fn = fn
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> object:
        self.entered.set()
        if not self.release.wait(WAIT):
            raise TimeoutError("the test never released the target")
        self.calls.append(x.copy())
        return self.fn(x)

    def hold(self, batcher: Batcher, first: np.ndarray):
        """Submit ``first`` and return its future once the worker is inside the call."""
        future = batcher.submit(first)
        assert self.entered.wait(WAIT)
        return future


def run_in_thread(fn: Callable[[], object]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


# ---- results reach their callers --------------------------------------------------------------------
def test_threads_each_get_their_own_result(runtime):
    inputs = images(241)
    expected = runtime.infer(np.stack(inputs))
    results: list[np.ndarray | None] = [None] * len(inputs)
    with Batcher(runtime, max_batch=16, max_delay_ms=5, max_queue=1000) as batcher:
        barrier = threading.Barrier(12)

        def client(k: int) -> None:
            barrier.wait(WAIT)
            futures = [(i, batcher.submit(inputs[i], timeout=None)) for i in range(k, len(inputs), 12)]
            for i, f in futures:
                results[i] = f.result(timeout=WAIT)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        sizes = dict(batcher.batch_sizes)
    for got, want in zip(results, expected):
        assert got is not None and got.shape == (10,)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert sum(size * count for size, count in sizes.items()) == len(inputs)  # every request ran exactly once
    assert max(sizes) <= 16


def test_asyncio_tasks(runtime):
    inputs = images(37)
    expected = runtime.infer(np.stack(inputs))

    async def main(batcher: Batcher) -> list[np.ndarray]:
        return await asyncio.wait_for(asyncio.gather(*(batcher.asubmit(x) for x in inputs)), WAIT)

    with Batcher(runtime, max_batch=8, max_delay_ms=20, max_queue=100) as batcher:
        results = asyncio.run(main(batcher))
        sizes = dict(batcher.batch_sizes)
    np.testing.assert_allclose(np.stack(results), expected, rtol=0, atol=1e-5)
    assert max(sizes) <= 8


def test_multi_image_requests_keep_their_rows(runtime):
    reqs = [RNG.standard_normal((n, 3, 32, 32), dtype=np.float32) for n in (1, 3, 2, 4, 5)]
    with Batcher(runtime, max_batch=6, max_delay_ms=20) as batcher:
        futures = [batcher.submit(x) for x in reqs]
        outs = [f.result(timeout=WAIT) for f in futures]
        assert max(batcher.batch_sizes) <= 6
    for x, out in zip(reqs, outs):
        np.testing.assert_allclose(out, runtime.infer(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("queued, max_batch, calls", [(10, 4, [4, 4, 2]), (7, 3, [3, 3, 1]), (5, 8, [5])])
def test_requests_waiting_together_share_calls(queued, max_batch, calls):
    target = Gated()
    with Batcher(target, max_batch=max_batch, max_delay_ms=0) as batcher:
        blocker = target.hold(batcher, np.ones((3, 2, 2), np.float32))
        inputs = images(queued, (3, 2, 2))
        futures = [batcher.submit(x) for x in inputs]
        assert batcher.pending == queued
        target.release.set()
        outs = [f.result(timeout=WAIT) for f in futures]
        assert blocker.result(timeout=WAIT) == 12.0
    assert [len(c) for c in target.calls] == [1, *calls]  # oldest first, as many as fit, nothing waited for
    np.testing.assert_allclose(outs, [x.sum() for x in inputs], rtol=1e-5)


def test_multi_row_request_that_does_not_fit_starts_the_next_call():
    target = Gated()
    with Batcher(target, max_batch=4, max_delay_ms=0) as batcher:
        target.hold(batcher, np.ones((3, 2, 2), np.float32))
        sizes = (2, 3, 1, 1, 4)
        futures = [batcher.submit(np.full((n, 3, 2, 2), n, np.float32)) for n in sizes]
        target.release.set()
        outs = [f.result(timeout=WAIT) for f in futures]
    assert [len(c) for c in target.calls] == [1, 2, 3 + 1, 1, 4]  # first come, first served
    assert [o.tolist() for o in outs] == [[12.0 * n] * n for n in sizes]


# ---- a bad request fails only itself ----------------------------------------------------------------
def test_a_failing_request_fails_only_itself(runtime):
    def infer_unless_nan(x: np.ndarray) -> np.ndarray:
        if np.isnan(x).any():
            raise ValueError("NaN in the batch")
        return runtime.infer(x)

    target = Gated(infer_unless_nan)
    good = images(7)
    with Batcher(target, max_batch=4, max_delay_ms=0) as batcher:
        target.hold(batcher, good[0])
        poisoned = good[1:4] + [np.full((3, 32, 32), np.nan, np.float32)] + good[4:]
        futures = [batcher.submit(x) for x in poisoned]
        target.release.set()
        with pytest.raises(ValueError, match="NaN"):
            futures[3].result(timeout=WAIT)
        outs = [f.result(timeout=WAIT) for i, f in enumerate(futures) if i != 3]
    np.testing.assert_allclose(np.stack(outs), runtime.infer(np.stack(good[1:])), rtol=0, atol=1e-5)
    # The failed call of 4 was isolated into 4 calls of 1; the 3 requests behind it ran together.
    assert [len(c) for c in target.calls] == [1, 4, 1, 1, 1, 1, 3]


def test_wrong_shape_request_to_a_plain_callable_fails_only_itself():
    def needs_8x8(x: np.ndarray) -> np.ndarray:
        if x.shape[1:] != (3, 8, 8):
            raise ValueError(f"expected 3x8x8 images, got {x.shape[1:]}")
        return row_sums(x)

    target = Gated(needs_8x8)
    good = images(190, (3, 8, 8))
    with Batcher(target, max_batch=64, max_delay_ms=0, max_queue=500) as batcher:
        target.hold(batcher, good[0])
        futures = [batcher.submit(x) for x in good[1:95]]
        bad = batcher.submit(np.zeros((3, 4, 4), np.float32))
        futures += [batcher.submit(x) for x in good[95:]]
        target.release.set()
        with pytest.raises(ValueError, match="expected 3x8x8"):
            bad.result(timeout=WAIT)
        outs = [f.result(timeout=WAIT) for f in futures]
    np.testing.assert_allclose(outs, [x.sum() for x in good[1:]], rtol=1e-4)
    odd = [c.shape for c in target.calls if c.shape[1:] != (3, 8, 8)]
    assert odd == [(1, 3, 4, 4)]  # the bad request ran alone; no good request ever shared its call
    assert sum(len(c) for c in target.calls) == 190 + 1


def test_requests_of_other_shapes_and_dtypes_never_share_a_call():
    target = Gated(lambda x: x.mean(axis=(1, 2, 3)))  # accepts any image size and dtype
    kinds = [((3, 8, 8), np.float32), ((3, 4, 4), np.float32), ((3, 8, 8), np.float16)]
    inputs = [RNG.standard_normal(shape).astype(dtype) for _ in range(5) for shape, dtype in kinds]
    with Batcher(target, max_batch=32, max_delay_ms=0) as batcher:
        target.hold(batcher, inputs[0])
        futures = [batcher.submit(x) for x in inputs[1:]]
        target.release.set()
        outs = [f.result(timeout=WAIT) for f in futures]
    for x, out in zip(inputs[1:], outs):
        assert out.dtype == x.dtype
        np.testing.assert_allclose(out.astype(np.float64), x.astype(np.float64).mean(), atol=2e-3)
    # Oldest first: the 4x4 requests queued first, then the float16 ones, then the rest of the blocker's kind.
    assert [(c.shape, c.dtype) for c in target.calls[1:]] == [
        ((5, 3, 4, 4), np.float32), ((5, 3, 8, 8), np.float16), ((4, 3, 8, 8), np.float32)]


MARK = -7.0  # a request holding this value makes the target misbehave


@pytest.mark.parametrize(
    "bad_output, described",
    [
        (lambda x: None, "returned None"),
        (lambda x: "oops", "returned a str"),
        (lambda x: [1.0] * len(x), "returned a list"),
        (lambda x: np.float32(1.0), r"shape \(\)"),
        (lambda x: row_sums(x)[:-1], "shape"),
        (lambda x: np.concatenate([row_sums(x), [0.0]]), "shape"),
    ],
    ids=["none", "str", "list", "scalar", "row-short", "row-extra"],
)
def test_target_returning_the_wrong_thing_fails_its_request_and_the_worker_goes_on(bad_output, described):
    target = Gated(lambda x: bad_output(x) if (x == MARK).any() else row_sums(x))
    with Batcher(target, max_batch=8, max_delay_ms=0) as batcher:
        target.hold(batcher, np.ones((3, 2, 2), np.float32))
        inputs = images(2, (3, 2, 2)) + [np.full((3, 2, 2), MARK, np.float32)] + images(2, (3, 2, 2))
        futures = [batcher.submit(x) for x in inputs]
        target.release.set()
        with pytest.raises(BatcherTargetError, match=f"{described}.*one row per input row"):
            futures[2].result(timeout=WAIT)
        good = [f.result(timeout=WAIT) for i, f in enumerate(futures) if i != 2]
        later = batcher.submit(np.ones((2, 3, 2, 2), np.float32)).result(timeout=WAIT)  # the worker lives
    np.testing.assert_allclose(good, [x.sum() for i, x in enumerate(inputs) if i != 2], rtol=1e-5)
    assert later.tolist() == [12.0, 12.0]


# ---- back-pressure, close() and a dying worker: nothing pending, nobody blocked ----------------------
def test_full_queue_pushes_back():
    target = Gated()
    batcher = Batcher(target, max_batch=1, max_delay_ms=0, max_queue=2)
    try:
        busy = target.hold(batcher, np.ones((3, 4, 4), np.float32))
        queued = [batcher.submit(np.full((3, 4, 4), v, np.float32)) for v in (2.0, 3.0)]
        with pytest.raises(QueueFullError, match="queue is full.*raise max_queue"):
            batcher.submit(np.ones((3, 4, 4), np.float32))
        with pytest.raises(QueueFullError):
            batcher.submit(np.ones((3, 4, 4), np.float32), timeout=0.05)
        target.release.set()
        assert busy.result(timeout=WAIT) == 48.0
        assert [f.result(timeout=WAIT) for f in queued] == [96.0, 144.0]
        assert batcher.submit(np.ones((3, 4, 4), np.float32), timeout=None).result(timeout=WAIT) == 48.0
    finally:
        target.release.set()
        batcher.close()


def test_close_drains_at_once_then_refuses(runtime):
    inputs = images(20)
    batcher = Batcher(runtime, max_batch=32, max_delay_ms=600_000)  # would wait 10 minutes for a full batch
    futures = [batcher.submit(x) for x in inputs]
    closer = run_in_thread(batcher.close)
    closer.join(WAIT)
    assert not closer.is_alive(), "close() waited for the batching delay instead of draining"
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(BatcherClosedError, match="closed; create a new one"):
        batcher.submit(inputs[0])
    batcher.close()  # idempotent


@pytest.mark.parametrize("timeout", [None, 5])
def test_close_wakes_submitters_blocked_on_a_full_queue(timeout):
    target = Gated()
    batcher = Batcher(target, max_batch=1, max_delay_ms=0, max_queue=2)
    target.hold(batcher, np.ones((3, 2, 2), np.float32))
    queued = [batcher.submit(np.ones((3, 2, 2), np.float32)) for _ in range(2)]
    outcomes: list[object] = []

    def blocked_submitter() -> None:
        try:
            outcomes.append(batcher.submit(np.ones((3, 2, 2), np.float32), timeout=timeout))
        except BatcherClosedError as exc:
            outcomes.append(exc)

    submitters = [run_in_thread(blocked_submitter) for _ in range(3)]
    closer = run_in_thread(batcher.close)  # waits for the held call; the submitters must not
    for t in submitters:
        t.join(WAIT)
        assert not t.is_alive(), "a submit() stayed blocked after close()"
    assert all(isinstance(o, BatcherClosedError) for o in outcomes) and len(outcomes) == 3
    target.release.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert [f.result(timeout=0) for f in queued] == [12.0, 12.0]  # accepted before close: answered


def test_close_racing_submitters_never_strands_a_request():
    """Submitters hammer a small queue with blocking submits while close() runs at varying moments."""
    stranded = blocked = answered = 0
    for trial in range(40):
        batcher = Batcher(row_sums, max_batch=2, max_delay_ms=0, max_queue=4)
        accepted: list[tuple[float, object]] = []
        lock, enough = threading.Lock(), threading.Event()
        close_after = 1 + trial % 25

        def client(k: int) -> None:
            for i in range(40):
                value = float(k * 100 + i)
                try:
                    f = batcher.submit(np.full((3, 2, 2), value, np.float32), timeout=None if k % 2 else 5)
                except BatcherClosedError:
                    return
                except QueueFullError:
                    continue
                with lock:
                    accepted.append((value, f))
                    if len(accepted) >= close_after:
                        enough.set()

        clients = [run_in_thread(lambda k=k: client(k)) for k in range(6)]
        enough.wait(WAIT)
        batcher.close()
        for t in clients:
            t.join(WAIT)
        blocked += sum(t.is_alive() for t in clients)
        with lock:  # every request accepted was accepted before close() returned, so it must be answered
            stranded += sum(not f.done() for _, f in accepted)
            answered += len(accepted)
            results = [(v, f.result(timeout=0)) for v, f in accepted if f.done()]
        assert all(got == 12 * v for v, got in results)
    assert (stranded, blocked) == (0, 0)
    assert answered >= 40


def test_a_dying_worker_fails_every_request_and_refuses_new_ones():
    target = Gated()
    batcher = Batcher(target, max_batch=1, max_delay_ms=0, max_queue=2)
    run_one, runs = batcher._run, []

    def faulty_run(batch):  # fault injection: the loop itself breaks on its second batch
        runs.append(len(batch))
        if len(runs) == 2:
            raise RuntimeError("injected fault")
        run_one(batch)

    batcher._run = faulty_run
    first = target.hold(batcher, np.ones((3, 2, 2), np.float32))
    queued = [batcher.submit(np.ones((3, 2, 2), np.float32)) for _ in range(2)]
    late: list[object] = []
    waiter = run_in_thread(lambda: late.append(_submit_or_error(batcher)))
    target.release.set()
    assert first.result(timeout=WAIT) == 12.0
    for f in queued:
        with pytest.raises(BatcherClosedError, match=r"worker thread stopped \(RuntimeError: injected fault\)"):
            f.result(timeout=WAIT)
    waiter.join(WAIT)
    assert not waiter.is_alive() and len(late) == 1
    if not isinstance(late[0], BatcherClosedError):  # it got in before the fault: it must fail, not hang
        with pytest.raises(BatcherClosedError, match="worker thread stopped"):
            late[0].result(timeout=WAIT)
    with pytest.raises(BatcherClosedError, match="worker thread stopped.*create a new Batcher"):
        batcher.submit(np.ones((3, 2, 2), np.float32))
    closer = run_in_thread(batcher.close)
    closer.join(WAIT)
    assert not closer.is_alive()


def _submit_or_error(batcher: Batcher) -> object:
    try:
        return batcher.submit(np.ones((3, 2, 2), np.float32), timeout=None)
    except BatcherClosedError as exc:
        return exc


def test_close_from_inside_the_target_does_not_deadlock():
    holder: list[Batcher] = []

    def closing_target(x: np.ndarray) -> np.ndarray:
        holder[0].close()
        return row_sums(x)

    batcher = Batcher(closing_target, max_batch=4, max_delay_ms=0)
    holder.append(batcher)
    assert batcher.submit(np.ones((3, 2, 2), np.float32)).result(timeout=WAIT) == 12.0
    with pytest.raises(BatcherClosedError):
        batcher.submit(np.ones((3, 2, 2), np.float32))
    batcher.close()


# ---- refused at the door ----------------------------------------------------------------------------
def test_bad_requests_are_refused_at_submit(runtime):
    with Batcher(runtime, max_batch=4) as batcher:
        with pytest.raises(RuntimeInputError, match=r"expects float32 \(N, 3, 32, 32\)"):
            batcher.submit(np.zeros((3, 16, 16), np.float32))
        with pytest.raises(RuntimeInputError, match="exceeds max_batch=4"):
            batcher.submit(np.zeros((5, 3, 32, 32), np.float32))
        with pytest.raises(RuntimeInputError, match=r"one image \(C, H, W\) or a few"):
            batcher.submit(np.zeros((32, 32), np.float32))
    with Batcher(row_sums) as batcher:
        for bad, message in [(None, r"got shape \(\)"), ("image.png", r"got shape \(\)"),
                             ([[1, 2], [3]], "one array"), (np.zeros((1, 3, 2, 2), object), "numeric"),
                             (np.zeros((0, 3, 2, 2), np.float32), "at least one image")]:
            with pytest.raises(RuntimeInputError, match=message):
                batcher.submit(bad)
        for timeout in (-1, "5"):
            with pytest.raises(RuntimeInputError, match="timeout must be None or"):
                batcher.submit(np.zeros((3, 2, 2), np.float32), timeout=timeout)
        assert batcher.pending == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_batch": 0}, "max_batch"), ({"max_batch": "8"}, "max_batch"), ({"max_queue": 0}, "max_queue"),
     ({"max_delay_ms": -1}, "max_delay_ms"), ({"max_delay_ms": float("nan")}, "max_delay_ms")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(RuntimeInputError, match=message):
        Batcher(row_sums, **kwargs)


def test_a_target_that_cannot_be_called_is_refused():
    with pytest.raises(RuntimeInputError, match="Runtime or a callable"):
        Batcher("model.onnx")
