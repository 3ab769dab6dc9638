"""Batch prediction output: rows keyed for resume, one line each, valid UTF-8, whole rows only after a failed write.

Columns (COLUMNS): `file`, the path as given on the command line (the folder given joined with the names under
it), for reading: characters that are not text are shown as Python escapes (`\\r`, `\\n`, `\\t`, `\\x01`; a byte
that is not UTF-8, as os.fsdecode leaves it, as `\\xff`), so it is not unique and not always the name to open.
`key`, the row's identity, which `--resume` matches on: the file's path relative to the input root (see
`digitlab.inference.batch.input_root`), `/`-separated, with `%`, control characters and non-UTF-8 bytes percent-encoded
(`a%0Db.png`, `%FF.png`; `urllib.parse.unquote_to_bytes(key)` gives the path's bytes back), so one file has one
key however its folder is spelled. Then `digit`, `confidence`, `status`, `message` (shown like `file`), p0..p9.

Every row is one line (no field holds a raw CR or LF), so a row cut off by a kill is the last line, which
resume drops. A failed write (disk full, file too large) truncates the output back to its last whole row and
raises a one-line StorageError; `--resume` continues from there. Outputs written in one go (a finished
.parquet, a Kaggle submission) go through `digitlab.core.atomic.atomic_write`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitlab.core.atomic import atomic_write, storage_error
from digitlab.core.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from digitlab.inference.predict import Prediction

__all__ = ["COLUMNS", "OUT_FORMATS", "BatchOutput", "check_out", "escape_key", "read_done", "shown"]

COLUMNS = ("file", "key", "digit", "confidence", "status", "message", *(f"p{d}" for d in range(10)))
OUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
PARQUET_JOURNAL = ".partial.jsonl"  # a .parquet is written at the end; until then rows go to OUT + this suffix

_NOT_TEXT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_NOT_KEY = re.compile(r"[%\x00-\x1f\x7f\ud800-\udfff]")
_ESCAPES = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _bytes_of(char: str) -> bytes:
    """The bytes one character stands for: os.fsdecode turns a non-UTF-8 byte into a lone surrogate U+DC80..DCFF."""
    return char.encode("utf-8", "surrogateescape" if "\udc80" <= char <= "\udcff" else "surrogatepass")


def shown(text: str) -> str:
    """`text` for reading, as valid UTF-8 on one line: control characters and non-UTF-8 bytes as escapes."""

    def escape(m: re.Match[str]) -> str:
        c = m.group()
        return _ESCAPES.get(c) or "".join(f"\\x{b:02x}" for b in _bytes_of(c))

    return _NOT_TEXT.sub(escape, text)


def escape_key(relpath: str) -> str:
    """A relative path (str from os.fsdecode) as a key: `%`, control characters and non-UTF-8 bytes as %XX."""
    return _NOT_KEY.sub(lambda m: "".join(f"%{b:02X}" for b in _bytes_of(m.group())), relpath)


def make_row(file: str, key: str, p: Prediction) -> dict[str, Any]:
    """One output row for the file listed as `file` with key `key`."""
    probs: list[float | None] = list(p.probabilities) if p.probabilities else [None] * 10
    return {"file": shown(file), "key": key, "digit": p.digit, "confidence": p.confidence, "status": p.status,
            "message": None if p.message is None else shown(p.message),
            **{f"p{d}": v for d, v in enumerate(probs)}}  # fmt: skip


def _drop_partial_line(path: Path) -> None:
    """Cut a last line without its newline (a write cut short by a kill) off `path`."""
    with path.open("r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        pos = end
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            block = f.read(step)
            k = block.rfind(b"\n")
            if k >= 0:
                f.truncate(pos - step + k + 1)
                return
            pos -= step
        f.truncate(0)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    for r in rows:
        probs = ["" if r[f"p{d}"] is None else f"{r[f'p{d}']:.6g}" for d in range(10)]
        writer.writerow([r["file"], r["key"], "" if r["digit"] is None else r["digit"], f"{r['confidence']:.6g}",
                         r["status"], r["message"] or "", *probs])  # fmt: skip
    return buf.getvalue()


def _jsonl_text(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _read_csv_keys(path: Path) -> set[str]:
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return set()
        if tuple(header) != COLUMNS:
            raise ConfigError(f"cannot resume {path}: its header is not {','.join(COLUMNS[:6])},p0..p9")
        return {row[1] for row in reader if len(row) > 1}


def _read_jsonl_keys(path: Path) -> set[str]:
    done = set()
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                done.add(json.loads(line)["key"])
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"cannot resume {path}: line {n} is not a JSON row with a 'key'") from None
    return done


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("writing .parquet needs pyarrow (pip install pyarrow); or use .csv or .jsonl") from None
    return pa, pq


def _parquet_schema(pa: Any) -> Any:
    return pa.schema([("file", pa.string()), ("key", pa.string()), ("digit", pa.int64()),
                      ("confidence", pa.float64()), ("status", pa.string()), ("message", pa.string()),
                      *((f"p{d}", pa.float64()) for d in range(10))])  # fmt: skip


class BatchOutput:
    """Append-only, flushed-per-batch rows in OUT (csv, jsonl) or, for parquet, in a JSONL journal beside OUT
    that becomes OUT when the job completes (a parquet file is unreadable until its footer is written)."""

    def __init__(self, out: Path, fsync: bool = False) -> None:
        self.out = Path(out)
        self.format = OUT_FORMATS.get(self.out.suffix.lower(), "")
        if not self.format:
            raise ConfigError(f"{self.out}: the output must end in {', '.join(OUT_FORMATS)}")
        if self.format == "parquet":
            _pyarrow()
        self.journal = self.out.with_name(self.out.name + PARQUET_JOURNAL) if self.format == "parquet" else self.out
        self.fsync = fsync
        self._f: io.FileIO | None = None
        self._whole = 0  # bytes of the journal that hold whole rows: where a failed write is cut back to

    def exists(self) -> bool:
        return self.out.exists() or self.journal.exists()

    def done(self) -> set[str]:
        """The keys already in the output (a cut-off last line is removed first)."""
        try:
            if self.journal.exists():
                _drop_partial_line(self.journal)
                if self.format == "csv":
                    return _read_csv_keys(self.journal)
                if self.journal.stat().st_size or not self.out.exists():  # (empty: `open` refills it from OUT)
                    return _read_jsonl_keys(self.journal)
        except OSError as e:
            raise ConfigError(f"cannot resume {self.journal}: {e.strerror or e}") from None
        if self.format == "parquet" and self.out.exists():
            return set(self._parquet_keys())
        return set()

    def _parquet_keys(self) -> Iterator[str]:
        _, pq = _pyarrow()
        try:
            for batch in pq.ParquetFile(self.out).iter_batches(columns=["key"]):
                yield from batch.column(0).to_pylist()
        except Exception as e:  # ArrowInvalid and friends: not (or no longer) a parquet file, or no key column
            raise ConfigError(f"cannot resume {self.out}: not a readable digitlab parquet file ({e})") from None

    def open(self) -> None:
        try:
            self.journal.parent.mkdir(parents=True, exist_ok=True)
            self._f = io.FileIO(self.journal, "a")
        except OSError as e:
            raise storage_error(self.journal, e) from None
        self._whole = self._f.seek(0, os.SEEK_END)
        if self.format == "parquet" and self._whole == 0 and self.out.exists():
            _, pq = _pyarrow()  # resuming a finished file: its rows go back into the journal first
            for batch in pq.ParquetFile(self.out).iter_batches():
                self.write(batch.to_pylist())
        if self._whole == 0 and self.format == "csv":
            self._write(",".join(COLUMNS) + "\n")

    def write(self, rows: list[dict[str, Any]]) -> None:
        self._write(_csv_text(rows) if self.format == "csv" else _jsonl_text(rows))

    def _write(self, text: str) -> None:
        """Append `text` (whole rows) or, failing that, nothing: a partial write is cut off again."""
        if self._f is None:
            raise RuntimeError(f"{self.journal} is not open: call open() first")
        data = memoryview(text.encode("utf-8"))  # strict: `shown` and `escape_key` left no surrogates
        size = len(data)
        try:
            while data:
                data = data[self._f.write(data) :]
            if self.fsync:
                os.fsync(self._f.fileno())
        except BaseException as e:  # a full disk, or Ctrl+C between two partial writes
            with contextlib.suppress(OSError):  # if even that fails, resume drops a cut-off last line all the same
                self._f.truncate(self._whole)
            if not isinstance(e, OSError):
                raise
            raise StorageError(f"{storage_error(self.journal, e)}; it keeps the rows written before, and --resume "
                               "continues once there is room") from None  # fmt: skip
        self._whole += size

    def close(self, complete: bool) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if complete and self.format == "parquet" and self.journal.exists():
            try:
                atomic_write(self.out, self._journal_to_parquet)
            except StorageError as e:
                raise StorageError(f"{e}; its rows are kept in {self.journal}, and --resume writes it once there "
                                   "is room") from None  # fmt: skip
            self.journal.unlink()

    def _journal_to_parquet(self, dest: Path, rows_per_group: int = 65536) -> None:
        pa, pq = _pyarrow()
        schema = _parquet_schema(pa)
        with pq.ParquetWriter(dest, schema) as writer, self.journal.open(encoding="utf-8") as f:
            rows: list[dict[str, Any]] = []
            for line in f:
                if line.strip():
                    rows.append(json.loads(line))
                if len(rows) >= rows_per_group:
                    writer.write_table(pa.Table.from_pylist(rows, schema))
                    rows = []
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema))


def check_out(out: str | os.PathLike[str], resume: bool = False) -> None:
    """Raise ConfigError now, before any work, if `out` cannot be the output of `predict_files`: an unknown
    suffix, .parquet without pyarrow, or an existing output without `resume`."""
    output = BatchOutput(Path(out))
    if output.exists() and not resume:
        raise ConfigError(f"{output.out} already exists: add --resume to continue it, or remove it first")


def read_done(out: str | os.PathLike[str]) -> set[str]:
    """The `key` values already in a batch output (.csv, .jsonl or .parquet, finished or cut off)."""
    return BatchOutput(Path(out)).done()
