"""Prediction output: odd file names (CR, LF, comma, quote, non-UTF-8 bytes) as one UTF-8 line per row and resumed
once each; a full disk or a file-size limit mid-job (whole rows kept, resume completes); atomic one-go outputs;
stdout to a full disk or a closed pipe as one line."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote_to_bytes

import numpy as np
import pytest
from PIL import Image

from digitlab.core.atomic import atomic_write
from digitlab.core.errors import StorageError
from digitlab.inference.batch import keyed_inputs, predict_files
from digitlab.inference.batch_output import COLUMNS, shown
from digitlab.inference.predict import Predictor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bytes file names, /dev/full: Linux")

ODD = [b"cr\rname.png", b"lf\nname.png", b"comma,name.png", b'quote"name.png', b"bad\xffbyte.png", b"100%.png"]
BROKEN = b'broken\r\n\xff,".png'  # not an image: its error message, which names it, is escaped like the name


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def read_rows(path: Path) -> list[dict]:
    text = path.read_bytes().decode("utf-8")  # strict: the output is valid UTF-8
    if path.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text, newline="")))
    return [json.loads(line) for line in text.split("\n") if line]


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run)


@pytest.fixture(scope="module")
def odd(mnist, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    for i, name in enumerate(ODD):
        Path(os.fsdecode(os.path.join(os.fsencode(root), name))).write_bytes(png(mnist.test.images[i]))
    Path(os.fsdecode(os.path.join(os.fsencode(root), BROKEN))).write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def scans(mnist, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scans")
    for i in range(24):
        (root / f"{i:02d}.png").write_bytes(png(mnist.test.images[i]))
    return root


def test_shown_and_keys_escape_what_is_not_text():
    assert shown('a\rb\nc\t\x01\udcff é,"') == 'a\\rb\\nc\\t\\x01\\xff é,"'
    assert list(keyed_inputs(["dir/a%\r\udcff é.png"])) == ["a%25%0D%FF é.png"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_odd_names_are_one_utf8_line_each_and_resume_adds_each_once(predictor, odd, tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    s = predict_files(predictor, [odd], out, workers=0)
    assert s.written == 7 and s.counts["error"] == 1
    text = out.read_bytes().decode("utf-8")
    assert text.count("\n") == 7 + (suffix == ".csv") and "\r" not in text  # one line per row, header included
    rows = read_rows(out)
    assert sorted(unquote_to_bytes(r["key"]) for r in rows) == sorted([*ODD, BROKEN])  # the exact names, back
    by_key = {r["key"]: r for r in rows}
    assert by_key["cr%0Dname.png"]["file"] == f"{odd}/cr\\rname.png"
    assert by_key["bad%FFbyte.png"]["file"] == f"{odd}/bad\\xffbyte.png"
    assert by_key["comma,name.png"]["file"] == f"{odd}/comma,name.png"
    message = by_key['broken%0D%0A%FF,".png']["message"]  # names the file, shown as text too
    assert "broken" in message and "\\xff" in message and not {"\r", "\n", "\udcff"} & set(message)
    lines = text.split("\n")
    out.write_bytes("\n".join(lines[:-2]).encode() + b"\n")  # the last row lost: only it is redone
    s = predict_files(predictor, [odd], out, resume=True, workers=0)
    assert (s.skipped, s.written) == (6, 1)
    s = predict_files(predictor, [odd], out, resume=True, workers=0)
    assert (s.skipped, s.written) == (7, 0)
    keys = [r["key"] for r in read_rows(out)]
    assert len(keys) == len(set(keys)) == 7


def _cli_limited(limit: int | None, *args: object, **kw) -> subprocess.CompletedProcess[str]:
    """`digitlab ARGS` with files capped at `limit` bytes (RLIMIT_FSIZE; SIGXFSZ ignored, so writes fail EFBIG)."""

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # (a .pyc written now would meet the cap too)
    kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
    return subprocess.run([sys.executable, "-m", "digitlab.cli", *map(str, args)], text=True, env=env, timeout=300,
                          preexec_fn=cap if limit is not None else None, **kw)  # fmt: skip


def _one_line_error(r: subprocess.CompletedProcess[str], says: str) -> None:
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()  # (a batch job's progress bar, off a terminal, leaves a blank line)
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], r.stderr


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_file_size_limit_mid_job_keeps_whole_rows_and_resume_completes(tiny_run, predictor, scans, tmp_path,
                                                                         suffix):  # fmt: skip
    whole = tmp_path / f"whole{suffix}"
    predict_files(predictor, [scans], whole, workers=0)
    limit = whole.stat().st_size // 2 + 7  # somewhere inside a row
    out = tmp_path / f"cut{suffix}"
    r = _cli_limited(limit, "predict", tiny_run, scans, "--out", out, "--batch-size", "2", "--workers", "0")
    _one_line_error(r, "File too large")
    data = out.read_bytes()
    assert 0 < len(data) <= limit and data.endswith(b"\n")
    rows = read_rows(out)  # whole rows only: each parses, with every column
    keys = [r["key"] for r in read_rows(whole)]
    assert [r["key"] for r in rows] == keys[: len(rows)] and 0 < len(rows) < 24
    assert all(list(r) == list(COLUMNS) and r["p9"] not in (None, "") for r in rows)
    s = predict_files(predictor, [scans], out, resume=True, workers=0)
    assert (s.skipped, s.written) == (len(rows), 24 - len(rows))
    assert [r["key"] for r in read_rows(out)] == keys


def test_one_go_outputs_are_whole_or_absent(tiny_run, mnist, tmp_path):
    sub = tmp_path / "out" / "submission.csv"
    csv_path = tmp_path / "test.csv"
    csv_path.write_text(",".join(f"pixel{i}" for i in range(784)) + "\n" + ",".join(["0"] * 784) + "\n")
    r = _cli_limited(10, "predict", tiny_run, csv_path, "--kaggle-submission", sub)
    _one_line_error(r, "File too large")
    assert os.listdir(sub.parent) == []  # neither the file nor a temporary one
    old = tmp_path / "old.txt"
    old.write_text("previous, whole")

    def fill(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError, match="cannot write .*old.txt: No space left on device"):
        atomic_write(old, fill)
    assert old.read_text() == "previous, whole" and sorted(os.listdir(tmp_path)) == ["old.txt", "out", "test.csv"]


def test_parquet_that_cannot_be_written_keeps_its_journal(predictor, scans, tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "r.parquet"

    def full(self, table, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(pq.ParquetWriter, "write_table", full)
        with pytest.raises(StorageError, match="No space left on device"):
            predict_files(predictor, [scans], out, workers=0)
    assert sorted(os.listdir(tmp_path)) == ["r.parquet.partial.jsonl"]  # the rows, and no half parquet
    s = predict_files(predictor, [scans], out, resume=True, workers=0)
    assert (s.skipped, s.written) == (24, 0) and pq.read_table(out).num_rows == 24
    assert sorted(os.listdir(tmp_path)) == ["r.parquet"]


@pytest.mark.parametrize("command", ["predict", "read"])
@pytest.mark.parametrize("fmt", ["json", "table"])
def test_stdout_to_a_full_disk_is_one_line(tiny_run, scans, fmt, command):
    with open("/dev/full", "w") as full:
        r = _cli_limited(None, command, tiny_run, scans / "00.png", "--format", fmt, stdout=full)
    _one_line_error(r, "cannot write the output to stdout: No space left on device")


def test_batch_summary_to_a_full_disk_and_a_closed_pipe(tiny_run, scans, tmp_path):
    out = tmp_path / "r.csv"
    with open("/dev/full", "w") as full:
        r = _cli_limited(None, "predict", tiny_run, scans, "--out", out, "--workers", "0", stdout=full)
    _one_line_error(r, "No space left on device")
    assert len(read_rows(out)) == 24  # the rows are whole: only the summary line could not be shown
    cmd = [sys.executable, "-m", "digitlab.cli", "predict", str(tiny_run), str(scans / "00.png"), "--format", "json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # `| head` gone before the answer comes
    err = proc.stderr.read()
    assert proc.wait(300) == 1 and "Traceback" not in err and err == "error: cannot write the output to stdout: " \
        "Broken pipe\n", err  # fmt: skip
