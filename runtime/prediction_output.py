"""Prediction files: JSON Lines, CSV or Parquet, appended batch by batch and resumable after a kill at any byte.

Every format holds one record per image file: ``path``, ``indices``, ``names``, ``probabilities`` (the
top-k, most probable first) and ``error`` (None, or why the file could not be read; such records have
empty top-k lists). How each format survives an interrupted run:

- ``.jsonl``: one JSON object per line, each batch written and flushed as whole lines. On resume a last
  line without its newline (the process died inside a write) is cut off; everything before it stands.
- ``.csv``: a header row (``path, error, index_1, name_1, probability_1, ...``), then one row per image,
  flushed per batch. On resume an incomplete last row is cut off the same way.
- ``.parquet``: a *folder* of part files (``part-000000.parquet``, ...), the layout Spark, Ray and
  ``pyarrow.parquet.read_table(folder)`` read as one table. A Parquet file is only readable once its
  footer is written, so results are buffered and written as a part every ``PARQUET_ROWS_PER_PART`` rows (and at
  the end), to a hidden temporary name renamed into place when complete. A kill loses at most the buffered
  part, which the resumed run predicts again; hidden leftovers are deleted on resume.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..provenance import check_output_folder
from .errors import OutputError
from .file_predict import FileResult

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
PARQUET_ROWS_PER_PART = 4096
PARQUET_SECONDS_PER_PART = 60.0  # also write a part after this long, so a slow run loses little
PART_PREFIX = "part-"


def output_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``jsonl``, ``csv`` or ``parquet``: ``fmt`` when given, else from the file name's suffix."""
    if fmt is not None:
        if fmt not in FORMATS.values():
            raise OutputError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS.values())}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"cannot tell the format of {path} from its suffix; name it *.jsonl, *.csv or "
                          f"*.parquet, or pass --format")
    return FORMATS[suffix]


def record(result: FileResult) -> dict[str, Any]:
    """The output record of one result."""
    p = result.predictions
    return {"path": result.path, "indices": [x.index for x in p], "names": [x.name for x in p],
            "probabilities": [x.probability for x in p], "error": result.error}


def output_exists(path: str | os.PathLike) -> bool:
    return os.path.lexists(path)


def check_output(path: str | os.PathLike, fmt: str, *, resume: bool, force: bool) -> bool:
    """Checks before any work; returns whether an existing output will be continued.

    Refuses an existing output unless ``resume`` (continue it) or ``force`` (replace it), and both at once;
    refuses a missing or read-only folder.
    """
    if resume and force:
        raise OutputError("--resume continues the output and --force replaces it; pass only one of them")
    path = Path(path)
    check_output_folder(path)
    if fmt == "parquet":
        _import_arrow()
    if not output_exists(path):
        return False
    if fmt == "parquet" and not path.is_dir() or fmt != "parquet" and path.is_dir():
        kind = "a folder" if path.is_dir() else "a file"
        raise OutputError(f"{path} exists and is {kind}, which a {fmt} output cannot be; choose another --out")
    if fmt == "parquet" and force and not _is_parts_folder(path):
        raise OutputError(f"{path} holds files that are not prediction parts; refusing to replace it, choose "
                          f"another --out")
    if not (resume or force):
        raise OutputError(f"{path} exists; pass --resume to continue it (files already in it are skipped) or "
                          f"--force to replace it")
    return resume


def remove_output(path: str | os.PathLike) -> None:
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif output_exists(path):
        path.unlink()


class PredictionWriter(ABC):
    """Appends results to one output; ``done`` holds the paths already in it when it was opened."""

    def __init__(self, path: Path, topk: int) -> None:
        self.path = path
        self.topk = topk
        self.done: set[str] = set()
        self.earlier_failed = 0  # failed records found on resume

    def _found(self, rec: dict[str, Any]) -> None:
        self.done.add(rec["path"])
        if rec["error"]:
            self.earlier_failed += 1

    @abstractmethod
    def write(self, results: Sequence[FileResult]) -> None:
        """Append ``results`` (one batch); they are on disk (or buffered, Parquet) when this returns."""

    def close(self) -> None:
        """Write what is buffered and close the file."""

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- JSON Lines --------------------------------------------------------------------------------------
class JsonlWriter(PredictionWriter):
    """JSON Lines to ``path``, or to an open text ``stream`` (e.g. stdout; then nothing is resumed)."""

    def __init__(self, path: Path, topk: int, resume: bool, stream: TextIO | None = None) -> None:
        super().__init__(path, topk)
        if resume:
            good = 0
            for number, (line, end) in enumerate(_complete_lines(path), 1):
                self._found(_parse_json_record(line, path, number))
                good = end
            _truncate(path, good)
        self._owned = stream is None
        self._file = stream or open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, results: Sequence[FileResult]) -> None:
        self._file.write("".join(json.dumps(record(r)) + "\n" for r in results))
        self._file.flush()

    def close(self) -> None:
        if self._owned:
            self._file.close()


def _complete_lines(path: Path) -> Iterator[tuple[bytes, int]]:
    """(line, byte offset after it) of each line that ends with a newline; stops at an incomplete one."""
    offset = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            yield line, offset


def _truncate(path: Path, size: int) -> None:
    if path.stat().st_size > size:
        with open(path, "r+b") as f:
            f.truncate(size)


def _parse_json_record(line: bytes, path: Path, number: int) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except ValueError:
        rec = None
    if not isinstance(rec, dict) or "path" not in rec or "error" not in rec:
        raise OutputError(f"line {number} of {path} is not a prediction record; the file was changed by "
                          f"something else: pass --force to start over, or choose another --out")
    return rec


# ---- CSV -------------------------------------------------------------------------------------------------
def csv_header(topk: int) -> list[str]:
    cols = ["path", "error"]
    for i in range(1, topk + 1):
        cols += [f"index_{i}", f"name_{i}", f"probability_{i}"]
    return cols


def csv_row(rec: dict[str, Any], topk: int) -> list[Any]:
    row: list[Any] = [rec["path"], rec["error"] or ""]
    for i in range(topk):
        has = i < len(rec["indices"])
        row += [rec["indices"][i], rec["names"][i], repr(rec["probabilities"][i])] if has else ["", "", ""]
    return row


def csv_record(row: list[str]) -> dict[str, Any]:
    rec: dict[str, Any] = {"path": row[0], "error": row[1] or None, "indices": [], "names": [],
                           "probabilities": []}
    for i in range(2, len(row), 3):
        if row[i] != "":
            rec["indices"].append(int(row[i]))
            rec["names"].append(row[i + 1])
            rec["probabilities"].append(float(row[i + 2]))
    return rec


class CsvWriter(PredictionWriter):
    def __init__(self, path: Path, topk: int, resume: bool) -> None:
        super().__init__(path, topk)
        header = csv_header(topk)
        good = 0
        if resume:
            rows = _complete_csv_rows(path)
            if rows and rows[0][0] != header:
                had = (len(rows[0][0]) - 2) // 3
                raise OutputError(f"{path} was written with --topk {had}; resume it with --topk {had}, or pass "
                                  f"--force to start over")
            for number, (row, end) in enumerate(rows[1:], 2):
                if len(row) != len(header):
                    raise OutputError(f"row {number} of {path} has {len(row)} fields, not {len(header)}; the file "
                                      f"was changed by something else: pass --force to start over")
                self._found(csv_record(row))
                good = end
            good = good or (rows[0][1] if rows else 0)
            _truncate(path, good)
        # surrogateescape: file names that are not valid UTF-8 (possible on Linux) survive the round trip
        self._file = open(path, "a", encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._file, lineterminator="\n")
        if good == 0:
            self._csv.writerow(header)
            self._file.flush()

    def write(self, results: Sequence[FileResult]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for r in results:
            writer.writerow(csv_row(record(r), self.topk))
        self._file.write(buf.getvalue())  # one write per batch
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _complete_csv_rows(path: Path) -> list[tuple[list[str], int]]:
    """(row, byte offset after it) of each complete row; a row cut by a kill (also inside a quoted path
    with a newline) is left out."""
    end = 0

    def lines() -> Iterator[str]:
        nonlocal end
        for line, offset in _complete_lines(path):
            end = offset
            yield line.decode("utf-8", errors="surrogateescape")

    rows = []
    reader = csv.reader(lines(), strict=True)
    try:
        for row in reader:
            rows.append((row, end))
    except csv.Error:  # the file ends inside a quoted field: that row is incomplete
        pass
    return rows


# ---- Parquet -------------------------------------------------------------------------------------------
def _arrow_schema(pa: Any) -> Any:
    return pa.schema([("path", pa.string()), ("error", pa.string()), ("indices", pa.list_(pa.int32())),
                      ("names", pa.list_(pa.string())), ("probabilities", pa.list_(pa.float64()))])


def _is_parts_folder(path: Path) -> bool:
    return all(p.name.startswith((PART_PREFIX, ".")) and p.is_file() for p in path.iterdir())


def _parts(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.name.startswith(PART_PREFIX) and p.suffix == ".parquet")


class ParquetWriter(PredictionWriter):
    def __init__(self, path: Path, topk: int, resume: bool) -> None:
        super().__init__(path, topk)
        self.pa, self.pq = _import_arrow()
        self.rows_per_part = PARQUET_ROWS_PER_PART
        self.seconds_per_part = PARQUET_SECONDS_PER_PART
        self._buffer: list[dict[str, Any]] = []
        self._since = time.monotonic()
        if resume:
            for p in path.iterdir():
                if p.name.startswith(f".{PART_PREFIX}"):
                    p.unlink()  # a part whose write was interrupted
            for part in _parts(path):
                for rec in self.pq.read_table(part, columns=["path", "error"]).to_pylist():
                    self._found(rec)
        else:
            path.mkdir()
        parts = _parts(path)
        self._next = int(parts[-1].stem.removeprefix(PART_PREFIX)) + 1 if parts else 0

    def write(self, results: Sequence[FileResult]) -> None:
        self._buffer.extend(record(r) for r in results)
        if len(self._buffer) >= self.rows_per_part or time.monotonic() - self._since >= self.seconds_per_part:
            self._write_part()

    def _write_part(self) -> None:
        self._since = time.monotonic()
        if not self._buffer:
            return
        table = self.pa.Table.from_pylist(self._buffer, schema=_arrow_schema(self.pa))
        name = f"{PART_PREFIX}{self._next:06d}.parquet"
        tmp = self.path / f".{name}.tmp"
        self.pq.write_table(table, tmp)
        os.replace(tmp, self.path / name)  # a part is there whole or not at all
        self._next += 1
        self._buffer = []

    def close(self) -> None:
        self._write_part()


def _import_arrow() -> tuple[Any, Any]:
    from ..errors import require

    pa = require("pyarrow", "'psvit-deploy[parquet]'", "Parquet prediction files")
    return pa, require("pyarrow.parquet", "'psvit-deploy[parquet]'", "Parquet prediction files")


# ---- opening and reading ---------------------------------------------------------------------------------
def open_output(path: str | os.PathLike, fmt: str, topk: int, *, resume: bool) -> PredictionWriter:
    """A writer appending to ``path`` (checked with :func:`check_output` first); with ``resume`` the
    existing records are read (``writer.done``) and an incomplete tail is cut off."""
    path = Path(path)
    resume = resume and output_exists(path)
    cls = {"jsonl": JsonlWriter, "csv": CsvWriter, "parquet": ParquetWriter}[fmt]
    return cls(path, topk, resume)


def read_predictions(path: str | os.PathLike, fmt: str | None = None) -> list[dict[str, Any]]:
    """All records of a prediction output (complete rows only), in file order."""
    path = Path(path)
    fmt = output_format(path, fmt)
    if fmt == "jsonl":
        return [_parse_json_record(line, path, n) for n, (line, _) in enumerate(_complete_lines(path), 1)]
    if fmt == "csv":
        return [csv_record(row) for row, _ in _complete_csv_rows(path)[1:]]
    _, pq = _import_arrow()
    return [rec for part in _parts(path) for rec in pq.read_table(part).to_pylist()]
