"""Batch prediction over large folders: streaming, bounded queues, resumable output.

    digitlab predict RUN scans/ --recursive --out results.csv --backend onnx    # also .jsonl, .parquet
    digitlab predict RUN scans/ --recursive --out results.csv --resume          # after a kill: only the rest
    digitlab predict RUN test.csv --kaggle-submission submission.csv            # Kaggle's ImageId,Label file

Each file is decoded and preprocessed (`digitlab.data.preprocess`, as `Predictor.predict` does) in a pool of workers,
CHUNK files per task, with at most IN_FLIGHT tasks per worker submitted ahead, so memory stays flat however
many files there are. The main process runs the model over batches (`Predictor.classify`: the run's temperature
and "not a digit" rule), appends one row per file, errors included, and flushes after every batch: a killed
job loses at most its last batch, and `resume` skips the files already in the output. Rows are keyed by the
file's path relative to the input root (`input_root`), so a resume may spell the folder differently (relative,
absolute, through a symlink); the columns and the escaping of odd file names are in `digitlab.inference.batch_output`.

Worker processes for big jobs, threads for small ones: preprocessing a scan costs ~1 ms of CPU in hundreds of
small NumPy/SciPy calls on small arrays (an MNIST-format 28x28 file, which skips re-framing, ~0.2 ms), i.e.
mostly Python holding the GIL (the PNG decode, which PIL does without it, is a small part), so threads cannot
spread it over two cores and processes can; but a process pool is slower to start. Workers are forked from a
fork server that imports NumPy, SciPy and PIL once (~0.3 s of CPU, then milliseconds per worker; under spawn
each worker paid ~0.4 s of CPU for its own imports).
`bench/batch_predict.py --pool process thread` measures both.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitlab.core.atomic import atomic_write
from digitlab.core.errors import ConfigError, DigitlabError
from digitlab.data.datasets import IMAGE_SUFFIXES
from digitlab.data.preprocess import preprocess
from digitlab.inference.batch_output import (
    COLUMNS,
    OUT_FORMATS,
    BatchOutput,
    check_out,
    escape_key,
    make_row,
    read_done,
)

if TYPE_CHECKING:  # digitlab.inference.predict imports torch: kept out of the worker processes, which only preprocess
    from multiprocessing.context import BaseContext

    from digitlab.inference.predict import Prediction, Predictor

__all__ = [
    "BATCH_SIZE",
    "COLUMNS",
    "OUT_FORMATS",
    "BatchSummary",
    "check_out",
    "default_workers",
    "input_root",
    "kaggle_submission",
    "keyed_inputs",
    "list_inputs",
    "predict_files",
    "prepare_file",
    "read_done",
]

BATCH_SIZE = 256  # images per model batch, and per flush of the output
CHUNK = 32  # files per worker task: amortises the inter-process round trip (~0.1 ms) over ~60 ms of work
IN_FLIGHT = 4  # tasks per worker submitted ahead of the one being consumed: bounds memory, keeps workers busy
PROCESS_MIN_FILES = 1000  # pool="auto": fewer files than this use threads (a process pool's start-up would cost more)

# (status, image, message) for one file: status "ok" (image: uint8 28x28), "empty" or "error".
Prepared = tuple[str, "np.ndarray | None", "str | None"]


def default_workers() -> int:
    """One decoding worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------- inputs


def input_root(inputs: Sequence[str | os.PathLike[str]]) -> str:
    """The folder the rows' keys are relative to: the deepest one holding every input, with symlinks, `.`, `..`
    and repeated slashes resolved. A folder alone is its own root; a file alone, the folder it is in."""
    tops = [os.fspath(t) for t in inputs]
    tops = [os.path.realpath(t if os.path.isdir(t) else os.path.dirname(t) or ".") for t in tops]
    try:
        return os.path.commonpath(tops) if tops else ""
    except ValueError:  # Windows: inputs on different drives share no folder; the keys are then absolute paths
        return ""


def keyed_inputs(inputs: Sequence[str | os.PathLike[str]], recursive: bool = False) -> dict[str, str]:
    """{key: path} of the files to predict, in order, each once however many spellings of it `inputs` holds: a
    file as given (whatever its suffix); a folder's image files (by suffix, sorted by name), its subfolders' too
    with `recursive`, as paths joined onto the folder given. The key is the file's path relative to
    `input_root(inputs)` (symlinked folders resolved, the file's own name kept), escaped by `escape_key`."""
    root = input_root(inputs)
    listed: dict[str, str] = {}
    for item in inputs:
        top = os.fspath(item)
        if not os.path.isdir(top):
            real = os.path.realpath(os.path.dirname(top) or ".")
            listed.setdefault(_key(os.path.join(real, os.path.basename(top)), root), top)
            continue
        real = os.path.realpath(top)
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            if not recursive:
                dirs.clear()
            under = _key(os.path.join(real, os.path.relpath(folder, top)), root)  # once a folder: relpath is slow
            prefix = "" if under == "." else under + "/"
            for name in sorted(files):
                if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                    listed.setdefault(prefix + escape_key(name), os.path.join(folder, name))
    return listed


def _key(path: str, root: str) -> str:
    rel = os.path.relpath(path, root) if root else os.path.normpath(path)
    return escape_key(rel.replace(os.sep, "/"))


def list_inputs(inputs: Sequence[str | os.PathLike[str]], recursive: bool = False) -> list[str]:
    """The paths of `keyed_inputs`: the files to predict, in order, each once."""
    return list(keyed_inputs(inputs, recursive).values())


def prepare_file(path: str, thin: bool = False) -> Prepared:
    """Decode and preprocess one file as `Predictor.predict` does; never raises (the reason becomes the message)."""
    try:
        prep = preprocess(path, thin=thin)
    except DigitlabError as e:
        return "error", None, str(e)
    except Exception as e:  # an unforeseen decoder failure must not end a 100,000-file job
        return "error", None, " ".join(f"{path}: {type(e).__name__}: {e}".split())
    if prep.status != "ok":
        return "empty", None, prep.stats.reason or "no digit found"
    return "ok", prep.image, None


def _prepare_chunk(paths: list[str], prepare: Callable[[str], Prepared]) -> list[Prepared]:
    return [prepare(p) for p in paths]


def _worker_init(parent: int) -> None:
    """In each worker process: leave Ctrl+C to the parent, and exit when the parent dies (even by SIGKILL,
    which would otherwise leave the workers blocked on the task queue forever).

    `parent` is the job's process. A worker started by the fork server is the server's child instead; the
    server exits when the job's process does, so either way the worker is orphaned: its parent id changes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started_by = os.getppid()

    def watch() -> None:
        while os.getppid() == started_by and _alive(parent):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # exists, but is not ours to signal
        return True
    return True


def _mp_context() -> BaseContext:
    """The fork server where there is one (Linux, macOS), else spawn.

    Never plain fork: the parent holds a model and may run threads (ONNX Runtime, the progress bar), which a
    forked child would inherit in an undefined state. The fork server is a fresh single-threaded process that
    imports this module once (NumPy, SciPy, PIL: ~0.3 s of CPU) and forks every worker from there, so workers
    start in milliseconds, not each after its own imports as under spawn, and a second job in the same
    process reuses the server.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # (no effect once the server runs; it has this module by then)
    return ctx


def _executor(workers: int, pool: str, n_files: int) -> Executor | None:
    if pool not in ("auto", "process", "thread"):
        raise ConfigError(f"unknown pool {pool!r}; choose auto, process or thread")
    if workers == 0 or n_files == 0:
        return None
    if pool == "thread" or (pool == "auto" and n_files < PROCESS_MIN_FILES):
        return ThreadPoolExecutor(workers, thread_name_prefix="digitlab-decode")
    return ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_worker_init,
                               initargs=(os.getpid(),))  # fmt: skip


def _prepared(
    files: Sequence[str], prepare: Callable[[str], Prepared], executor: Executor | None, workers: int
) -> Iterator[tuple[str, Prepared]]:
    """(file, prepared) in input order; at most `workers * IN_FLIGHT` chunks are submitted and not yet consumed."""
    chunks = (list(files[i : i + CHUNK]) for i in range(0, len(files), CHUNK))
    if executor is None:
        for chunk in chunks:
            yield from zip(chunk, _prepare_chunk(chunk, prepare), strict=True)
        return
    window: deque[tuple[list[str], Future]] = deque()
    first = files[0] if files else ""  # the first file not yet consumed, for a dead worker's message
    try:
        for chunk in chunks:
            window.append((chunk, executor.submit(_prepare_chunk, chunk, prepare)))
            if len(window) >= workers * IN_FLIGHT:
                done, future = window.popleft()
                first = done[0]
                yield from zip(done, future.result(), strict=True)
        while window:
            done, future = window.popleft()
            first = done[0]
            yield from zip(done, future.result(), strict=True)
    except BrokenExecutor:  # a worker killed by the OOM killer, or a decoder that crashed its process
        raise DigitlabError(f"a decoding worker died (out of memory? a crashing decoder?) on {first} or a file "
                            "after it; the rows before it are saved") from None  # fmt: skip


# --------------------------------------------------------------------------------------------- the job


@dataclass
class BatchSummary:
    """What one `predict_files` call did: `files` found, `skipped` (already in the output), rows written now by
    status, and the wall time from listing the inputs to the last flush."""

    out: Path
    files: int
    skipped: int
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return sum(self.counts.values())

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else math.nan


# (path, key, prepared) for one file
Item = tuple[str, str, Prepared]


def _classify_batch(predictor: Predictor, items: list[Item]) -> list[dict[str, Any]]:
    from digitlab.inference.predict import Prediction

    ok = [k for k, (_, _, (status, _, _)) in enumerate(items) if status == "ok"]
    preds: list[Prediction | None] = [None] * len(items)
    for k, pred in zip(ok, predictor.classify([items[k][2][1] for k in ok]), strict=True):
        preds[k] = pred
    rows = []
    for (file, key, (status, _, message)), pred in zip(items, preds, strict=True):
        rows.append(make_row(file, key, pred or Prediction(None, [], 0.0, status, message)))
    return rows


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    recursive: bool = False,
    resume: bool = False,
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
    pool: str = "auto",
    fsync: bool = False,
    prepare: Callable[[str], Prepared] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Predict every image file in `inputs` (files and folders, see `keyed_inputs`) into `out` (.csv, .jsonl or
    .parquet; columns COLUMNS), one row per file, a failed file included as a row with status "error".

    `resume`: continue an existing `out`, skipping the files whose key is already in it (an existing `out` is
    an error otherwise, and so is one whose keys are none of these inputs': another input root). `workers`:
    decoding workers (default one per CPU; 0 decodes in this thread), processes or threads as `pool` says
    ("auto": processes from PROCESS_MIN_FILES files to do, threads below). `fsync` after every batch guards
    against power loss too, not just a killed job. `prepare(path) -> (status, image, message)`: the per-file
    work (default `prepare_file` with the predictor's `thin`); a module-level function for processes.
    `progress(done, total)` after each batch. Ctrl+C (KeyboardInterrupt) propagates once the rows of the
    finished batches are safe in `out`. A failed write (disk full, file too large) raises a one-line
    StorageError and leaves `out` holding whole rows only, ready for `resume`.
    """
    t0 = time.perf_counter()
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, not {batch_size}")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ConfigError(f"workers must be 0 or more, not {workers}")
    check_out(out, resume)
    output = BatchOutput(Path(out), fsync=fsync)
    files = keyed_inputs(inputs, recursive)
    todo = _todo(files, output.done() if resume else set(), output.out, inputs)
    summary = BatchSummary(output.out, len(files), len(files) - len(todo))
    if todo or output.journal.exists():  # else nothing new, and a finished parquet stays as it is
        prepare = prepare or partial(prepare_file, thin=predictor.thin)
        _run(predictor, todo, output, summary, prepare, workers, pool, batch_size, progress)
    summary.seconds = time.perf_counter() - t0
    return summary


def _todo(files: dict[str, str], done: set[str], out: Path,
          inputs: Sequence[str | os.PathLike[str]]) -> list[tuple[str, str]]:  # fmt: skip
    """(key, path) of the files not in `out` yet; a resume whose rows are none of these inputs' is an error."""
    if done and files and done.isdisjoint(files):
        raise ConfigError(f"none of the {len(done):,} rows in {out} is a file of these inputs (keys are "
                          f"paths relative to {input_root(inputs) or '/'}): resume with the inputs that wrote it, "
                          "or write a new --out")  # fmt: skip
    return [(key, path) for key, path in files.items() if key not in done]


def _run(predictor: Predictor, todo: list[tuple[str, str]], output: BatchOutput, summary: BatchSummary,
         prepare: Callable[[str], Prepared], workers: int, pool: str, batch_size: int,
         progress: Callable[[int, int], None] | None) -> None:  # fmt: skip
    """Prepare `todo` in the workers, predict it batch by batch and append the rows to `output`."""
    output.open()
    executor = _executor(workers, pool, len(todo))
    complete = False
    try:
        if progress:
            progress(0, len(todo))
        batch: list[Item] = []
        n = 0
        prepared_files = _prepared([path for _, path in todo], prepare, executor, workers)
        for (path, prepared), (key, _) in zip(prepared_files, todo, strict=True):
            batch.append((path, key, prepared))
            if len(batch) == batch_size:
                n += _flush(predictor, batch, output, summary)
                batch = []
                if progress:
                    progress(n, len(todo))
        if batch:
            n += _flush(predictor, batch, output, summary)
            if progress:
                progress(n, len(todo))
        complete = True
    finally:
        if executor is not None:
            executor.shutdown(wait=complete, cancel_futures=True)
        output.close(complete)


def _flush(predictor: Predictor, batch: list[Item], output: BatchOutput, summary: BatchSummary) -> int:
    rows = _classify_batch(predictor, batch)
    output.write(rows)
    for r in rows:
        summary.counts[r["status"]] = summary.counts.get(r["status"], 0) + 1
    return len(rows)


# --------------------------------------------------------------------------------------------- Kaggle


def kaggle_submission(
    predictor: Predictor,
    csv_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write Kaggle digit-recognizer's submission (`ImageId,Label`, ImageId from 1) for a test.csv; returns the
    row count. The CSV's images are already MNIST-format, so they go to the model as they are (no
    preprocessing, no "not a digit" rule: the competition wants a digit for every row)."""
    from digitlab.data.datasets import load_kaggle_csv

    images = load_kaggle_csv(Path(csv_path)).images
    out = Path(out)
    labels = []
    for start in range(0, len(images), batch_size):
        labels.append(predictor.predict_array(images[start : start + batch_size]).argmax(1))
        if progress:
            progress(min(start + batch_size, len(images)), len(images))
    label = np.concatenate(labels) if labels else np.zeros(0, np.int64)

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            f.write("ImageId,Label\n")
            f.writelines(f"{i},{int(d)}\n" for i, d in enumerate(label, 1))

    atomic_write(out, write)
    return len(label)
