"""A closed-loop load generator for Triton servers (perf_analyzer's concurrency mode, in Python).

At each concurrency level ``c``, ``c`` clients each keep one request in flight: send, wait for the answer,
send the next, until the level's request budget or time is spent. Per level: throughput (inferences/s),
client latency (mean, p50/p90/p95/p99), errors, and the server's own split of the time from Triton's
statistics endpoint (queue vs compute, executions vs inferences: the dynamic batcher's work). Inputs come
from a seeded pool; with a reference runtime every response is compared with ``Runtime.infer`` of the same
rows (relative L2 error per response) and matched to its request id, so a wrong, lost or swapped answer is
counted as a mismatch.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import require
from .errors import LoadTestError, check_at_least

PROTOCOLS = ("http", "grpc")
DEFAULT_CONCURRENCY = (1, 4, 16, 64)
DEFAULT_RTOL = 1e-5
_NUMPY = {"FP32": np.float32, "FP16": np.float16}


@dataclass
class LevelResult:
    """One concurrency level of a sweep; times in milliseconds."""

    concurrency: int
    requests: int  # answered, errors included
    errors: int
    inferences: int  # rows answered without error
    seconds: float
    throughput: float  # inferences per second
    latency: dict[str, float]  # mean_ms, p50_ms, p90_ms, p95_ms, p99_ms, min_ms, max_ms
    server: dict[str, float]  # queue_ms / compute_*_ms per request, executions, inferences, avg_batch
    checked: int = 0
    mismatches: int = 0
    max_rel_err: float = 0.0
    error_samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadTestReport:
    url: str
    model: str
    protocol: str
    batch: int
    levels: list[LevelResult]
    settings: dict[str, Any]
    machine: dict[str, Any]

    @property
    def mismatches(self) -> int:
        return sum(level.mismatches for level in self.levels)

    @property
    def errors(self) -> int:
        return sum(level.errors for level in self.levels)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "protocol": self.protocol, "batch": self.batch,
                "settings": self.settings, "machine": self.machine, "levels": [lv.to_dict() for lv in self.levels],
                "mismatches": self.mismatches, "errors": self.errors}


def parse_concurrency(text: str | Sequence[int]) -> list[int]:
    """``"1,4,16,64"`` -> [1, 4, 16, 64] (order kept, duplicates dropped)."""
    try:
        values = [int(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    except ValueError:
        raise LoadTestError(f"--concurrency takes comma-separated positive integers (1,4,16), got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise LoadTestError(f"--concurrency takes comma-separated positive integers (1,4,16), got {text!r}")
    return list(dict.fromkeys(values))


def _client_module(protocol: str) -> Any:
    if protocol not in PROTOCOLS:
        raise LoadTestError(f"--protocol {protocol!r}: use http or grpc")
    return require(f"tritonclient.{protocol}.aio", "'psvit-deploy[serve]'", "the load generator")


def _strip_scheme(url: str) -> str:
    return url.split("://", 1)[1] if "://" in url else url


def _stats(entry: dict[str, Any]) -> dict[str, float]:
    """Cumulative counters of one model from Triton's statistics (HTTP JSON or gRPC as_json: int64 as text)."""
    inf = entry.get("inference_stats", {})

    def part(key: str) -> tuple[int, int]:
        d = inf.get(key, {})
        return int(d.get("count", 0)), int(d.get("ns", 0))

    out: dict[str, float] = {"executions": int(entry.get("execution_count", 0)),
                             "inferences": int(entry.get("inference_count", 0))}
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        out[f"{key}_count"], out[f"{key}_ns"] = part(key)
    return out


def server_split(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-request server times (ms) and the batcher's work between two statistics snapshots."""
    d = {k: after[k] - before.get(k, 0) for k in after}
    n = max(d["success_count"], 1)
    executions = d["executions"]
    return {
        "queue_ms": d["queue_ns"] / n / 1e6, "compute_input_ms": d["compute_input_ns"] / n / 1e6,
        "compute_infer_ms": d["compute_infer_ns"] / n / 1e6, "compute_output_ms": d["compute_output_ns"] / n / 1e6,
        "requests": d["success_count"], "failed": d["fail_count"], "executions": executions,
        "inferences": d["inferences"], "avg_batch": d["inferences"] / executions if executions else 0.0,
    }


class _Target:
    """One protocol's async client calls, as the load generator needs them."""

    def __init__(self, protocol: str, url: str, model: str, timeout_s: float) -> None:
        self.mod = _client_module(protocol)
        self.protocol, self.url, self.model, self.timeout_s = protocol, _strip_scheme(url), model, timeout_s

    def client(self) -> Any:
        return self.mod.InferenceServerClient(self.url)

    async def metadata(self, client: Any) -> dict[str, Any]:
        if self.protocol == "grpc":
            return await client.get_model_metadata(self.model, as_json=True)
        return await client.get_model_metadata(self.model)

    async def settled_statistics(self, client: Any, tries: int = 40, pause_s: float = 0.05) -> dict[str, float]:
        """Statistics once two reads agree: Triton records a request just after answering it."""
        last = await self.statistics(client)
        for _ in range(tries):
            await asyncio.sleep(pause_s)
            now = await self.statistics(client)
            if now == last:
                break
            last = now
        return last

    async def statistics(self, client: Any) -> dict[str, float]:
        if self.protocol == "grpc":
            raw = await client.get_inference_statistics(self.model, as_json=True)
        else:
            raw = await client.get_inference_statistics(self.model)
        entries = [e for e in raw.get("model_stats", []) if e.get("name") == self.model]
        return _stats(entries[0]) if entries else {}

    async def infer(self, client: Any, name: str, x: np.ndarray, datatype: str, output: str, request_id: str
                    ) -> tuple[np.ndarray, str]:
        inp = self.mod.InferInput(name, list(x.shape), datatype)
        inp.set_data_from_numpy(x)
        outputs = [self.mod.InferRequestedOutput(output)]
        if self.protocol == "grpc":
            result = await client.infer(self.model, [inp], outputs=outputs, request_id=request_id,
                                        client_timeout=self.timeout_s)
            rid = result.get_response().id
        else:
            result = await client.infer(self.model, [inp], outputs=outputs, request_id=request_id,
                                        timeout=int(self.timeout_s * 1e6))
            rid = result.get_response().get("id", "")
        return result.as_numpy(output), rid


def _unreachable(target: _Target, exc: Exception) -> LoadTestError:
    """The error for a server or model that does not answer its metadata request."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return LoadTestError(f"cannot reach model {target.model!r} at {target.url} over {target.protocol} ({detail}); "
                         f"start a server with `psvit-export serve ARTIFACT` or check --model and the port")


async def _close(client: Any) -> None:
    res = client.close()
    if asyncio.iscoroutine(res):
        await res


async def _sweep(target: _Target, levels: list[int], requests: int | None, duration: float | None, batch: int,
                 pool: np.ndarray, reference: np.ndarray | None, rtol: float, warmup: int,
                 say: Callable[[str], None]) -> tuple[list[LevelResult], dict[str, Any]]:
    probe = target.client()
    try:
        try:
            meta = await target.metadata(probe)
        except Exception as exc:  # InferenceServerException, connection refused...
            raise _unreachable(target, exc) from exc
        inputs, outputs = meta.get("inputs", []), meta.get("outputs", [])
        if len(inputs) != 1 or inputs[0].get("datatype") not in _NUMPY or not outputs:
            raise LoadTestError(f"model {target.model!r} takes {[(i.get('name'), i.get('datatype')) for i in inputs]}; "
                                f"the load generator drives models with one FP32/FP16 tensor input (e.g. psvit)")
        in_name, datatype = inputs[0]["name"], inputs[0]["datatype"]
        dims = [int(d) for d in inputs[0]["shape"]][1:]
        if list(pool.shape[1:]) != dims:
            raise LoadTestError(f"model {target.model!r} takes {dims} rows but the inputs are {list(pool.shape[1:])}")
        out_name = outputs[0]["name"]
        pool = pool.astype(_NUMPY[datatype])
        results = []
        for c in levels:
            clients = [target.client() for _ in range(c)]
            try:
                results.append(await _level(target, clients, probe, c, requests, duration, batch, pool, reference,
                                            rtol, warmup, in_name, datatype, out_name))
            finally:
                for cl in clients:
                    await _close(cl)
            lv = results[-1]
            say(f"concurrency {c}: {lv.throughput:,.0f} infer/s, p50 {lv.latency['p50_ms']:.2f} ms, p99 "
                f"{lv.latency['p99_ms']:.2f} ms, {lv.errors} errors, {lv.mismatches} mismatches")
        return results, {"input": in_name, "datatype": datatype, "dims": dims, "output": out_name}
    finally:
        await _close(probe)


async def _level(target: _Target, clients: list[Any], probe: Any, c: int, requests: int | None,
                 duration: float | None, batch: int, pool: np.ndarray, reference: np.ndarray | None, rtol: float,
                 warmup: int, in_name: str, datatype: str, out_name: str) -> LevelResult:
    from psvit.runtime.profiler import latency_stats

    n_pool = len(pool)

    def rows(i: int) -> list[int]:
        """Pool rows of request ``i``: consecutive, wrapping around."""
        return [(i * batch + j) % n_pool for j in range(batch)]

    for r in range(warmup):  # every client ``warmup`` times (connections opened, first batches formed), not counted
        await asyncio.gather(*(target.infer(cl, in_name, pool[rows(i)], datatype, out_name, f"warmup-{r}-{i}")
                               for i, cl in enumerate(clients)))
    before = await target.settled_statistics(probe)
    latencies: list[float] = []
    errors: list[str] = []
    checked = mismatches = 0
    max_err = 0.0
    next_id = 0
    cap = requests if requests is not None else float("inf")
    deadline = time.perf_counter() + duration if duration is not None else float("inf")

    async def worker(client: Any) -> None:
        nonlocal next_id, checked, mismatches, max_err
        while next_id < cap and time.perf_counter() < deadline:
            i = next_id
            next_id += 1
            idx = rows(i)
            t0 = time.perf_counter()
            try:
                out, rid = await target.infer(client, in_name, pool[idx], datatype, out_name, str(i))
            except Exception as exc:  # a Triton error answer: counted, the loop goes on
                latencies.append(time.perf_counter() - t0)
                errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - t0)
            if reference is not None:
                checked += 1
                ref = reference[idx]
                err = float(np.linalg.norm(out.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))
                max_err = max(max_err, err)
                if rid != str(i) or out.shape != ref.shape or not err <= rtol:
                    mismatches += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(cl) for cl in clients))
    seconds = time.perf_counter() - t0
    after = await target.settled_statistics(probe)
    if not latencies:
        raise LoadTestError(f"concurrency {c}: no request was sent; raise --requests or --duration")
    stats = latency_stats(latencies, 1)
    answered = len(latencies) - len(errors)
    return LevelResult(
        concurrency=c, requests=len(latencies), errors=len(errors), inferences=answered * batch, seconds=seconds,
        throughput=answered * batch / seconds if seconds > 0 else 0.0,
        latency={"mean_ms": stats.mean_ms, "p50_ms": stats.median_ms, "p90_ms": stats.p90_ms,
                 "p95_ms": stats.p95_ms, "p99_ms": stats.p99_ms, "min_ms": stats.min_ms, "max_ms": stats.max_ms},
        server=server_split(before, after) if before and after else {}, checked=checked, mismatches=mismatches,
        max_rel_err=max_err, error_samples=list(dict.fromkeys(errors))[:5],
    )


def input_pool(shape: Sequence[int], count: int = 16, seed: int = 0) -> np.ndarray:
    """``count`` seeded standard-normal rows of ``shape`` (C, H, W), float32."""
    return np.random.default_rng(seed).standard_normal((count, *shape), dtype=np.float32)


def run_loadtest(
    url: str,
    *,
    model: str = "psvit",
    protocol: str = "http",
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    requests: int | None = None,
    duration: float | None = None,
    batch: int = 1,
    reference: Any = None,
    input_shape: Sequence[int] | None = None,
    pool_size: int = 16,
    seed: int = 0,
    rtol: float = DEFAULT_RTOL,
    timeout_s: float = 60.0,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> LoadTestReport:
    """Sweep ``concurrency`` levels against ``model`` at ``url``; see the module docstring.

    Args:
        requests / duration: each level's budget: a request count or seconds (one of them; default 500 requests).
        reference: a :class:`psvit.runtime.Runtime` (or an artifact path) whose ``infer`` every response is checked
            against; None: responses are not checked.
        input_shape: (C, H, W) of the rows sent (default: the reference's input shape, else the server's).
        timeout_s: per-request client timeout.
    """
    if requests is not None and duration is not None:
        raise LoadTestError("give --requests or --duration, not both")
    if requests is None and duration is None:
        requests = 500
    check_at_least([("--requests", requests, 1)], LoadTestError)
    if duration is not None and duration <= 0:
        raise LoadTestError(f"--duration must be positive, got {duration}")
    check_at_least([("--batch", batch, 1)], LoadTestError)
    levels = parse_concurrency(concurrency)
    say = log or (lambda _m: None)
    target = _Target(protocol, url, model, timeout_s)
    rt = None
    if reference is not None and not hasattr(reference, "infer"):
        from psvit.runtime import load

        rt = reference = load(reference)
    try:
        if input_shape is None:
            input_shape = reference.input_shape if reference is not None else _server_shape(target)
        pool = input_pool(input_shape, pool_size, seed)
        ref = np.asarray(reference.infer(pool), dtype=np.float64) if reference is not None else None
        load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
        results, io = asyncio.run(_sweep(target, levels, requests, duration, batch, pool, ref, rtol, warmup, say))
    finally:
        if rt is not None:
            rt.close()
    from psvit.runtime.bench import machine_info

    machine = {**machine_info(), "loadavg_start": load_start,
               "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    settings = {"concurrency": levels, "requests": requests, "duration": duration, "pool": pool_size, "seed": seed,
                "rtol": rtol, "reference": getattr(reference, "name", None), "timeout_s": timeout_s, **io}
    return LoadTestReport(url, model, protocol, batch, results, settings, machine)


def _server_shape(target: _Target) -> list[int]:
    async def fetch() -> list[int]:
        client = target.client()
        try:
            meta = await target.metadata(client)
        except Exception as exc:
            raise _unreachable(target, exc) from exc
        finally:
            await _close(client)
        return [int(d) for d in meta["inputs"][0]["shape"]][1:]

    return asyncio.run(fetch())
