"""A micro-batcher for services: requests from many threads or asyncio tasks share backend calls.

One worker thread takes the first waiting request, then gathers more until ``max_batch`` rows are
collected or ``max_delay_ms`` has passed since that first request, runs them as one batch and hands each
caller its own rows. Back-pressure: the queue holds at most ``max_queue`` requests; :meth:`Batcher.submit`
waits up to ``timeout`` seconds for room (default: not at all) and then raises :class:`QueueFullError`,
so a service under overload sheds load instead of growing memory. An exception raised by one batch is set
on the futures of that batch only. :meth:`Batcher.close` stops intake and drains what is queued.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batching import check_batch
from .errors import BatcherClosedError, QueueFullError, RuntimeInputError

_STOP = object()


@dataclass
class _Request:
    x: np.ndarray  # (n, C, H, W)
    single: bool  # submitted as one (C, H, W) image: the result drops the batch axis
    future: Future


class Batcher:
    """Group concurrent requests into batches of at most ``max_batch`` rows.

    Args:
        target: a :class:`psvit.runtime.Runtime` (its ``infer`` is called) or any callable
            ``(N, C, H, W) array -> (N, ...) array``.
        max_batch: most rows per backend call.
        max_delay_ms: longest wait for more requests after the first one of a batch arrives.
        max_queue: most requests waiting; beyond it ``submit`` raises :class:`QueueFullError`.
    """

    def __init__(self, target: Any, max_batch: int = 32, max_delay_ms: float = 2.0, max_queue: int = 1024) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay_ms < 0:
            raise RuntimeInputError(
                f"need max_batch >= 1, max_queue >= 1, max_delay_ms >= 0; got {max_batch}, {max_queue}, {max_delay_ms}"
            )
        self._fn: Callable[[np.ndarray], Any] = target.infer if hasattr(target, "infer") else target
        self._input_shape = getattr(target, "input_shape", None)
        self._what = getattr(target, "name", "the batcher")
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._close_lock = threading.Lock()
        self._carry: _Request | None = None
        self.batch_sizes: Counter[int] = Counter()  # rows per backend call -> number of calls
        self._worker = threading.Thread(target=self._loop, name="psvit-batcher", daemon=True)
        self._worker.start()

    # ---- intake -----------------------------------------------------------------------------------
    def _request(self, x: Any) -> _Request:
        x = np.asarray(x)
        single = x.ndim == 3
        batch = x[None] if single else x  # (n, C, H, W)
        if self._input_shape is not None:
            check_batch(batch.shape, batch.dtype, batch.dtype.kind == "f", self._input_shape, self._what)
        if len(batch) == 0:
            raise RuntimeInputError("a request needs at least one image")
        if len(batch) > self.max_batch:
            raise RuntimeInputError(f"a request of {len(batch)} images exceeds max_batch={self.max_batch}; "
                                    f"call Runtime.infer directly for large batches")
        return _Request(batch, single, Future())

    def submit(self, x: Any, timeout: float | None = 0.0) -> Future:
        """Queue one image (C, H, W) or a few (n, C, H, W); the future resolves to its logits.

        ``timeout``: seconds to wait for room in a full queue (0: none, None: forever) before
        :class:`QueueFullError`.
        """
        req = self._request(x)
        if self._closed:
            raise BatcherClosedError("the batcher is closed; create a new one")
        try:
            if timeout == 0:
                self._queue.put_nowait(req)
            else:
                self._queue.put(req, timeout=timeout)
        except queue.Full:
            raise QueueFullError(
                f"the batcher's queue is full ({self.max_queue} requests waiting); retry later, raise max_queue "
                f"or max_batch, or add replicas"
            ) from None
        return req.future

    async def asubmit(self, x: Any) -> Any:
        """``await``-able :meth:`submit` for asyncio tasks; a full queue raises at once (no blocking)."""
        return await asyncio.wrap_future(self.submit(x, timeout=0.0))

    # ---- worker -----------------------------------------------------------------------------------
    def _gather(self) -> list[_Request] | None:
        """The next batch of requests; None once stopped and drained."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        if first is _STOP:
            return None
        batch, rows = [first], len(first.x)
        deadline = time.perf_counter() + self.max_delay
        while rows < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP or rows + len(item.x) > self.max_batch:
                self._carry = item  # starts the next batch (or ends the loop after this one)
                break
            batch.append(item)
            rows += len(item.x)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                x = np.concatenate([r.x for r in live]) if len(live) > 1 else live[0].x  # (rows, C, H, W)
                out = self._fn(x)
                self.batch_sizes[len(x)] += 1
            except BaseException as exc:  # noqa: BLE001 - delivered to this batch's callers only
                for r in live:
                    r.future.set_exception(exc)
                continue
            start = 0
            for r in live:
                rows = out[start:start + len(r.x)]
                start += len(r.x)
                r.future.set_result(rows[0] if r.single else rows)

    # ---- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Refuse new requests, answer every queued one, stop the worker. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)  # behind every queued request: they are drained first
        self._worker.join()
        while True:  # a submit that raced with close() landed behind the stop marker
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BatcherClosedError("the batcher closed before this request ran"))

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
