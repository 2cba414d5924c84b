"""A micro-batcher for services: requests from many threads or asyncio tasks share backend calls.

One worker thread takes the oldest waiting request, then gathers more of the same shape and dtype until
``max_batch`` rows are collected or ``max_delay_ms`` has passed since it started the batch, runs them as one
call and hands each caller its own rows. Back-pressure: the queue holds at most ``max_queue`` requests;
:meth:`Batcher.submit` waits up to ``timeout`` seconds for room (default: not at all) and then raises
:class:`QueueFullError`, so a service under overload sheds load instead of growing memory.

Guarantees, whatever the target does and whenever :meth:`Batcher.close` runs:

* every future ``submit`` returned is resolved (a result or an exception); none stays pending;
* a request fails only through its own fault: requests of another shape or dtype never share a call (a
  plain callable may accept several), and when a call of several requests fails — the target raises, or
  returns ``None``, a non-array or the wrong number of rows — each request is run again alone, so the
  exception lands on the request that causes it. (The target is called again for the others: it must be
  free of side effects, as inference is. A target that fails every call costs one extra call per request.)
* no caller stays blocked: ``close()`` wakes every ``submit`` waiting for room (they raise
  :class:`BatcherClosedError`) and answers every accepted request before it returns; if the worker thread
  itself ever stops, every waiting and later request fails with the reason instead of hanging.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batching import check_batch
from .errors import BatcherClosedError, BatcherTargetError, QueueFullError, RuntimeInputError


@dataclass
class _Request:
    x: np.ndarray  # (n, C, H, W)
    single: bool  # submitted as one (C, H, W) image: the result drops the batch axis
    future: Future

    @property
    def kind(self) -> tuple[tuple[int, ...], np.dtype]:
        """Requests of one kind can share a call: same image shape and dtype."""
        return self.x.shape[1:], self.x.dtype


def _settle(future: Future, *, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve ``future`` unless it already is (a caller may have set or cancelled it)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class Batcher:
    """Group concurrent requests into batches of at most ``max_batch`` rows.

    Args:
        target: a :class:`psvit.runtime.Runtime` (its ``infer`` is called; requests are checked against its
            input shape at submit) or any callable ``(N, C, H, W) array -> (N, ...) array``.
        max_batch: most rows per backend call.
        max_delay_ms: longest wait for more requests after the first one of a batch arrives.
        max_queue: most requests waiting; beyond it ``submit`` raises :class:`QueueFullError`.
    """

    def __init__(self, target: Any, max_batch: int = 32, max_delay_ms: float = 2.0, max_queue: int = 1024) -> None:
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RuntimeInputError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(max_delay_ms, bool) or not isinstance(max_delay_ms, (int, float)) or not max_delay_ms >= 0:
            raise RuntimeInputError(f"max_delay_ms must be a number >= 0, got {max_delay_ms!r}")
        fn = target.infer if hasattr(target, "infer") else target
        if not callable(fn):
            raise RuntimeInputError(
                f"the batcher's target must be a psvit.runtime.Runtime or a callable, got {type(target).__name__}"
            )
        self._fn: Callable[[np.ndarray], Any] = fn
        self._input_shape = getattr(target, "input_shape", None)
        self._what = getattr(target, "name", "the batcher")
        self.max_batch = max_batch
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        lock = threading.Lock()
        self._not_empty = threading.Condition(lock)  # the worker waits here for requests
        self._not_full = threading.Condition(lock)  # submitters wait here for room
        self._pending: collections.deque[_Request] = collections.deque()
        self._closed = False
        self._failure: BaseException | None = None  # why the worker thread stopped, if it did
        self.batch_sizes: Counter[int] = Counter()  # rows per successful target call -> number of calls
        self._worker = threading.Thread(target=self._loop, name="psvit-batcher", daemon=True)
        self._worker.start()

    @property
    def pending(self) -> int:
        """Requests waiting in the queue (not counting the batch the worker is running)."""
        with self._not_empty:
            return len(self._pending)

    # ---- intake -----------------------------------------------------------------------------------
    def _request(self, x: Any) -> _Request:
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:  # ragged nested lists and the like
            raise RuntimeInputError(f"a request must be one array (C, H, W) or (n, C, H, W); {exc}") from None
        if x.ndim not in (3, 4):
            raise RuntimeInputError(f"a request is one image (C, H, W) or a few (n, C, H, W); got shape {x.shape}")
        if x.dtype.kind not in "biuf":
            raise RuntimeInputError(f"a request must be a numeric array; got dtype {x.dtype}")
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

    def _refusal(self) -> BatcherClosedError:
        if self._failure is not None:
            err = BatcherClosedError(
                f"the batcher's worker thread stopped ({type(self._failure).__name__}: {self._failure}); "
                f"create a new Batcher"
            )
            err.__cause__ = self._failure
            return err
        return BatcherClosedError("the batcher is closed; create a new one")

    def submit(self, x: Any, timeout: float | None = 0.0) -> Future:
        """Queue one image (C, H, W) or a few (n, C, H, W); the future resolves to its logits.

        ``timeout``: seconds to wait for room in a full queue (0: none, None: until there is room or the
        batcher closes) before :class:`QueueFullError`. A closed batcher raises :class:`BatcherClosedError`,
        also to callers that were waiting for room when it closed.
        """
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise RuntimeInputError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        req = self._request(x)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._not_full:
            while True:
                if self._closed:
                    raise self._refusal()
                if len(self._pending) < self.max_queue:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise QueueFullError(
                        f"the batcher's queue is full ({self.max_queue} requests waiting); retry later, raise "
                        f"max_queue or max_batch, or add replicas"
                    )
                self._not_full.wait(remaining)
            self._pending.append(req)
            self._not_empty.notify()
        return req.future

    async def asubmit(self, x: Any) -> Any:
        """``await``-able :meth:`submit` for asyncio tasks; a full queue raises at once (no blocking)."""
        return await asyncio.wrap_future(self.submit(x, timeout=0.0))

    # ---- worker -----------------------------------------------------------------------------------
    def _take(self, batch: list[_Request], rows: int) -> int:
        """Move waiting requests of the batch's kind into ``batch`` (oldest first) while they fit; requests
        of other kinds keep their place. Returns the rows now in ``batch``. Holds the lock."""
        kind, skipped = batch[0].kind, []
        while self._pending and rows < self.max_batch:
            req = self._pending[0]
            if req.kind != kind:
                skipped.append(self._pending.popleft())
                continue
            if rows + len(req.x) > self.max_batch:
                break  # it starts a later batch: first come, first served
            batch.append(self._pending.popleft())
            rows += len(req.x)
        self._pending.extendleft(reversed(skipped))
        return rows

    def _gather(self) -> list[_Request] | None:
        """The next batch of requests; None once closed and drained."""
        with self._not_empty:
            while not self._pending and not self._closed:
                self._not_empty.wait()
            if not self._pending:
                return None
            batch = [self._pending.popleft()]
            deadline = time.monotonic() + self.max_delay
            rows = self._take(batch, len(batch[0].x))
            while rows < self.max_batch and not self._closed:  # closing: run what is there at once
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._not_empty.wait(remaining)
                rows = self._take(batch, rows)
            self._not_full.notify_all()  # room for submitters waiting on a full queue
        return batch

    def _call(self, requests: list[_Request]) -> list[Any]:
        """Run ``requests`` as one target call; each request's rows, or an exception."""
        x = np.concatenate([r.x for r in requests]) if len(requests) > 1 else requests[0].x  # (rows, C, H, W)
        out = self._fn(x)
        shape = getattr(out, "shape", None)
        if shape is None or len(shape) == 0 or shape[0] != len(x):
            got = (f"an array of shape {tuple(shape)}" if shape is not None
                   else "None" if out is None else f"a {type(out).__name__}")
            raise BatcherTargetError(
                f"the batcher's target returned {got} for a batch of {len(x)} rows; it must return an array "
                f"with one row per input row ((N, ...) for an (N, C, H, W) input)"
            )
        self.batch_sizes[len(x)] += 1
        parts, start = [], 0
        for r in requests:
            rows = out[start:start + len(r.x)]
            start += len(r.x)
            parts.append(rows[0] if r.single else rows)
        return parts

    def _run(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            parts = self._call(live)
        except BaseException as exc:  # noqa: BLE001 - delivered to the callers, never kills the worker
            if len(live) == 1:
                _settle(live[0].future, error=exc)
                return
            for r in live:  # isolate: run each request alone so a failure lands only on its cause
                try:
                    (part,) = self._call([r])
                except BaseException as own:  # noqa: BLE001
                    _settle(r.future, error=own)
                else:
                    _settle(r.future, result=part)
            return
        for r, part in zip(live, parts):
            _settle(r.future, result=part)

    def _loop(self) -> None:
        batch: list[_Request] = []
        try:
            while (batch := self._gather()) is not None:
                self._run(batch)
        except BaseException as exc:  # noqa: BLE001 - a bug in the loop itself: fail everyone, hang no one
            self._stop_after_failure(exc, batch or [])

    def _stop_after_failure(self, exc: BaseException, batch: list[_Request]) -> None:
        with self._not_full:
            self._failure = exc
            self._closed = True
            stranded = [*batch, *self._pending]
            self._pending.clear()
            self._not_full.notify_all()
            self._not_empty.notify_all()
            error = self._refusal()
        for r in stranded:
            _settle(r.future, error=error)

    # ---- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Refuse new requests, answer every queued one, stop the worker. Idempotent.

        Callers waiting in :meth:`submit` for room raise :class:`BatcherClosedError` at once; when this
        returns, every future ``submit`` handed out is resolved.
        """
        with self._not_full:
            self._closed = True
            self._not_full.notify_all()
            self._not_empty.notify_all()
        if threading.current_thread() is not self._worker:  # close() called from inside the target
            self._worker.join()

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
