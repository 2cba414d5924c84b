"""A prediction run from image files to an output file: checks first, resume, progress, summary.

The output gets a provenance record beside it, ``OUT.run.json`` (artifact and its sha256, top-k, format,
versions, and one summary per run). It is written before the output is created, and a resume refuses an
output whose record names another artifact, top-k or format, so one file never mixes two models.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..provenance import output_target, package_versions, sha256_file, write_json
from .errors import OutputError
from .file_inputs import find_images
from .file_predict import (
    DEFAULT_BATCH, PredictStats, ResultStream, check_run_settings, default_loader_workers,
)
from .prediction_output import (
    JsonlWriter, PredictionWriter, check_output, open_output, output_format, remove_output,
)

RUN_RECORD_SUFFIX = ".run.json"
MAX_LISTED_FAILURES = 1000  # the summary lists at most this many unreadable files (all are in the output)
Progress = Callable[[int, int, PredictStats], None]  # (files done in this run, files to do, stats)


def run_record_path(out: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(out)}{RUN_RECORD_SUFFIX}")


@dataclass
class PredictSummary:
    """What one run did; ``to_dict()`` is the JSON the CLI writes with ``--json``."""

    out: str
    format: str
    found: int  # image files named by the inputs
    already_done: int  # of those, already in the output (resume)
    stats: PredictStats
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error) in this run
    earlier_failed: int = 0  # failed records found in the output on resume
    write_s: float = 0.0
    setup_s: float = 0.0  # finding files, checking and loading the artifact (Ray: also the cluster)
    total_s: float = 0.0
    engine: str = "local"
    runtime: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "out": self.out, "format": self.format, "engine": self.engine, "found": self.found,
            "already_done": self.already_done, "predicted": s.images, "failed": s.failed,
            "failed_files": [{"path": p, "error": e} for p, e in self.failed[:MAX_LISTED_FAILURES]],
            "earlier_failed": self.earlier_failed, "images_per_s": s.images_per_s,
            "seconds": {"total": self.total_s, "setup": self.setup_s, "pipeline": s.wall_s,
                        "decode": s.decode_s, "preprocess": s.preprocess_s, "infer": s.infer_s,
                        "wait_for_loader": s.wait_s, "write": self.write_s},
            "stats": s.to_dict(), "runtime": self.runtime, "settings": self.settings,
        }


def _artifact_identity(artifact: str | os.PathLike) -> dict[str, Any]:
    path = Path(artifact)
    sha = sha256_file(path) if path.is_file() else None
    return {"artifact": str(artifact), "artifact_sha256": sha}


def _check_resumable(record_path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The run record of an output being resumed; raises when it was made with other settings."""
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        raise OutputError(f"{record_path} is missing, so {record_path.name.removesuffix(RUN_RECORD_SUFFIX)} was "
                          f"not written by psvit-export predict (or its record was deleted); choose another "
                          f"--out, or pass --force to replace it") from None
    except ValueError as exc:
        raise OutputError(f"{record_path} is not valid JSON ({exc}); pass --force to start over") from exc
    for key in ("format", "topk", "artifact_sha256"):
        if record.get(key) != expected[key]:
            what = {"format": "format", "topk": "--topk", "artifact_sha256": "artifact"}[key]
            was = record.get("artifact") if key == "artifact_sha256" else record.get(key)
            raise OutputError(f"the output was written with {what} {was!r}, this run has "
                              f"{expected['artifact'] if key == 'artifact_sha256' else expected[key]!r}; resume "
                              f"with the same settings, or choose another --out (--force replaces it)")
    if expected["artifact_sha256"] is None and record.get("artifact") != expected["artifact"]:
        raise OutputError(f"the output was written with artifact {record.get('artifact')!r}, this run has "
                          f"{expected['artifact']!r}; resume with the same artifact, or choose another --out")
    return record


class _Output:
    """The output of one run with its run record: opened after the checks, finished or abandoned."""

    def __init__(self, out: Path | None, fmt: str, topk: int, *, continuing: bool, force: bool,
                 identity: dict[str, Any]) -> None:
        self.out, self.continuing, self.written = out, continuing, False
        self.record_path = run_record_path(out) if out is not None else None
        self.record: dict[str, Any] = {}
        if out is None:
            self.writer: PredictionWriter = JsonlWriter(Path("-"), topk, resume=False, stream=sys.stdout)
            return
        if continuing:
            self.record = _check_resumable(self.record_path, identity)
        else:
            if force:
                remove_output(out)
            self.record = {"kind": "psvit-predictions", **identity, "created": _now(), "runs": []}
            write_json(self.record_path, self.record)  # before the output: an output without it is not ours
        try:
            self.writer = open_output(out, fmt, topk, resume=continuing)
        except BaseException:
            self._forget()
            raise

    def write(self, results: Sequence[Any]) -> None:
        self.writer.write(results)
        self.written = True

    def abandon(self) -> None:
        """After a failure: keep what was written (resumable); a new output with no result is removed."""
        self.writer.close()
        if not self.written:
            self._forget()

    def _forget(self) -> None:
        if self.out is not None and not self.continuing:
            remove_output(self.out)
            self.record_path.unlink(missing_ok=True)  # type: ignore[union-attr]

    def finish(self, summary: PredictSummary) -> None:
        self.writer.close()
        if self.record_path is not None:
            run = {k: v for k, v in summary.to_dict().items() if k != "failed_files"}
            self.record["runs"].append({"finished": _now(), **run,
                                        "versions": package_versions("torch", "onnxruntime", "ray")})
            write_json(self.record_path, self.record)


def predict_to_file(
    artifact: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None,
    *,
    fmt: str | None = None,
    topk: int = 5,
    batch: int = DEFAULT_BATCH,
    loader_workers: int | None = None,
    loader_timeout_s: float | None = None,
    backend: str = "auto",
    device: str | None = None,
    options: dict[str, Any] | None = None,
    resume: bool = False,
    force: bool = False,
    ray: Any = None,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Progress | None = None,
) -> PredictSummary:
    """Predict the image files of ``inputs`` into ``out`` (``.jsonl``, ``.csv`` or ``.parquet``; None:
    JSON lines on stdout).

    Everything that can be checked is checked before the artifact is loaded: settings, inputs, the output
    folder, an existing output (refused unless ``resume`` or ``force``) and, on resume, that it was
    written with the same artifact, top-k and format. ``loader_timeout_s``: the longest wait for one batch
    from the loader workers (None: no limit). ``ray``: None for this machine, or a
    :class:`psvit.runtime.ray_predict.RaySettings`. ``on_start(found, to_do)`` is called once the files
    are known, ``on_progress(done, to_do, stats)`` after every batch.
    """
    t_start = time.perf_counter()
    check_run_settings(topk, batch, loader_workers)
    if out is None:
        if resume or force or fmt not in (None, "jsonl"):
            raise OutputError("--resume, --force and --format need an output file: pass --out FILE")
        fmt, continuing = "jsonl", False
    else:
        fmt = output_format(out, fmt)
        out = output_target(out)  # a symlink's target; no device, FIFO or socket; a name NAME.run.json can extend
        continuing = check_output(out, fmt, resume=resume, force=force)
    if ray is not None:
        from .ray_predict import require_ray

        require_ray()
    paths = find_images(inputs)
    output = _Output(out, fmt, topk, continuing=continuing, force=force,
                     identity={**_artifact_identity(artifact), "topk": topk, "format": fmt})
    workers = default_loader_workers() if loader_workers is None else loader_workers
    todo = [p for p in paths if p not in output.writer.done]
    summary = PredictSummary(
        out=str(out or "-"), format=fmt, found=len(paths), already_done=len(paths) - len(todo),
        stats=PredictStats(), earlier_failed=output.writer.earlier_failed,
        engine="local" if ray is None else "ray",
        settings={"topk": topk, "batch": batch, "backend": backend, "device": device, "options": options or {},
                  "loader_workers": workers if ray is None else None, "resume": continuing})
    try:
        if on_start is not None:
            on_start(len(paths), len(todo))
        stream = _open_stream(artifact, todo, topk=topk, batch=batch, workers=workers, timeout_s=loader_timeout_s,
                              backend=backend, device=device, options=options or {}, ray=ray)
        summary.stats = stream.stats
        t_setup = time.perf_counter()
        with stream:
            for results in stream.batches():
                t0 = time.perf_counter()
                output.write(results)
                summary.write_s += time.perf_counter() - t0
                summary.failed.extend((r.path, r.error or "") for r in results if not r.ok)
                if on_progress is not None:
                    on_progress(stream.stats.files, len(todo), stream.stats)
        summary.setup_s = t_setup - t_start + stream.startup_s
        summary.runtime = stream.describe()
    except BaseException:
        output.abandon()
        raise
    summary.total_s = time.perf_counter() - t_start
    output.finish(summary)
    return summary


def _open_stream(artifact: str | os.PathLike, paths: list[str], *, topk: int, batch: int, workers: int,
                 timeout_s: float | None, backend: str, device: str | None, options: dict[str, Any],
                 ray: Any) -> ResultStream:
    if ray is not None:
        from .ray_predict import RayPredictionStream

        return RayPredictionStream(artifact, paths, topk=topk, batch=batch, backend=backend, device=device,
                                   options=options, settings=ray)
    from .api import load
    from .file_predict import PredictionStream, throughput_options

    runtime = load(artifact, backend, device, **throughput_options(artifact, options))
    return PredictionStream(runtime, paths, topk=topk, batch=batch, loader_workers=workers,
                            loader_timeout_s=timeout_s, close_runtime=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
