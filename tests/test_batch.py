"""Batch prediction: folder walking, rows like Predictor.predict, csv/jsonl/parquet outputs, resume (also after a
real SIGKILL of `digitlab predict --out`), and the Kaggle submission."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from digitlab.core.errors import ConfigError
from digitlab.inference.batch import input_root, kaggle_submission, keyed_inputs, list_inputs, predict_files
from digitlab.inference.batch_output import COLUMNS, check_out, read_done
from digitlab.inference.predict import Predictor


def png(a: np.ndarray, invert: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(255 - a if invert else a).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run)


@pytest.fixture(scope="module")
def onnx_run(tiny_run, tmp_path_factory) -> Path:
    from digitlab.inference.export import export_onnx

    run = shutil.copytree(tiny_run, tmp_path_factory.mktemp("batch") / "run")
    export_onnx(run, parity_n=10)
    return run


@pytest.fixture(scope="module")
def folder(mnist, tmp_path_factory) -> Path:
    """12 digits (dark on white and white on black), a blank page, a corrupt file, a text file, and a subfolder."""
    root = tmp_path_factory.mktemp("scans")
    for i in range(12):
        (root / f"d{i:02d}.png").write_bytes(png(mnist.test.images[i], invert=i % 2 == 0))
    Image.new("L", (40, 40), 255).save(root / "blank.png")
    (root / "broken.png").write_bytes(b"not an image")
    (root / "notes.txt").write_text("not listed: not an image suffix")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "s0.PNG").write_bytes(png(mnist.test.images[20]))
    (root / "sub" / "deeper" / "s1.png").write_bytes(png(mnist.test.images[21]))
    return root


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_list_inputs_walks_folders_in_order_and_keeps_files_as_given(folder):
    top = list_inputs([folder])
    names = [Path(f).name for f in top]
    assert names == ["blank.png", "broken.png", *(f"d{i:02d}.png" for i in range(12))]  # sorted, no notes.txt
    assert all(f.startswith(str(folder)) for f in top)
    deep = list_inputs([folder], recursive=True)
    assert deep[: len(top)] == top and [Path(f).name for f in deep[len(top) :]] == ["s0.PNG", "s1.png"]
    # a file named explicitly is kept whatever its suffix; each file appears once
    assert list_inputs([folder / "notes.txt", folder, folder / "d00.png"]) == [str(folder / "notes.txt"), *top]
    assert list_inputs([folder, f"{folder}/.", "/" + str(folder)]) == top  # however many ways it is spelled


def test_keys_are_paths_relative_to_the_folder_holding_every_input(folder):
    real = os.path.realpath(folder)
    assert input_root([folder]) == real and list(keyed_inputs([folder / "sub"], True)) == ["s0.PNG", "deeper/s1.png"]
    assert input_root([folder / "d00.png"]) == real and list(keyed_inputs([folder / "d00.png"])) == ["d00.png"]
    both = keyed_inputs([folder / "sub", folder / "sub" / ".." / "d00.png"], recursive=True)
    assert list(both) == ["sub/s0.PNG", "sub/deeper/s1.png", "d00.png"]
    assert list(both.values()) == [str(folder / "sub" / "s0.PNG"), str(folder / "sub" / "deeper" / "s1.png"),
                                   str(folder / "sub" / ".." / "d00.png")]  # fmt: skip


def test_resume_matches_files_however_their_folder_is_spelled(predictor, folder, tmp_path, monkeypatch):
    link = tmp_path / "link"
    link.symlink_to(folder, target_is_directory=True)
    monkeypatch.chdir(folder.parent)
    out = tmp_path / "r.csv"
    predict_files(predictor, [folder.name], out, recursive=True, workers=0)
    for spelling in (str(folder), "/" + str(folder), f"{folder.parent}/./{folder.name}", f"{folder.name}/", link):
        s = predict_files(predictor, [spelling], out, recursive=True, resume=True, workers=0)
        assert (s.skipped, s.written) == (16, 0), spelling
    rows = read_rows(out)
    assert sorted(r["key"] for r in rows) == sorted(keyed_inputs([folder], recursive=True)) and len(rows) == 16
    assert rows[0]["file"] == f"{folder.name}/blank.png"  # the path as it was given
    # another root (here: the subfolder alone) would key the same files differently: refused, not duplicated
    with pytest.raises(ConfigError, match="none of the 16 rows .* is a file of these inputs"):
        predict_files(predictor, [folder / "sub"], out, resume=True, workers=0)


@pytest.mark.parametrize("workers,pool", [(0, "process"), (2, "thread"), (1, "process")])
def test_rows_are_what_predictor_predict_says(predictor, folder, tmp_path, workers, pool):
    out = tmp_path / "rows.jsonl"
    done = []
    s = predict_files(predictor, [folder], out, recursive=True, batch_size=5, workers=workers, pool=pool,
                      progress=lambda n, total: done.append((n, total)))  # fmt: skip
    files = list_inputs([folder], recursive=True)
    rows = read_rows(out)
    assert [r["file"] for r in rows] == files and list(rows[0]) == list(COLUMNS)
    assert s.files == s.written == len(files) == 16 and s.skipped == 0 and s.counts["error"] == 1
    assert done[0] == (0, 16) and done[-1] == (16, 16) and [n for n, _ in done[1:]] == [5, 10, 15, 16]
    for row, ref in zip(rows, predictor.predict(files), strict=True):
        assert (row["status"], row["digit"], row["message"]) == (ref.status, ref.digit, ref.message)
        probs = [row[f"p{d}"] for d in range(10)]
        if ref.probabilities and ref.status != "empty":  # (batch rows carry no probabilities for empty images)
            assert probs == pytest.approx(ref.probabilities, abs=1e-6)
            assert row["confidence"] == pytest.approx(ref.confidence, abs=1e-6)
        else:
            assert probs == [None] * 10 and row["confidence"] == 0.0
    by_name = {Path(r["file"]).name: r for r in rows}
    assert by_name["blank.png"]["status"] == "empty"
    assert by_name["broken.png"]["status"] == "error" and "broken.png" in by_name["broken.png"]["message"]


def test_csv_resume_skips_done_files_and_drops_a_cut_off_row(predictor, folder, tmp_path):
    out = tmp_path / "r.csv"
    predict_files(predictor, [folder], out, workers=0)  # top level only: 14 rows
    with pytest.raises(ConfigError, match="already exists: add --resume"):
        predict_files(predictor, [folder], out, workers=0)
    text = out.read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS)
    lines = text.splitlines(keepends=True)
    out.write_text("".join(lines[:-2]) + lines[-2][:20])  # as if killed mid-write: the last row half there
    s = predict_files(predictor, [folder], out, recursive=True, resume=True, workers=0)
    assert s.skipped == 12 and s.written == 4  # the cut-off row, the last row, and the subfolder's two
    files = [r["file"] for r in read_rows(out)]
    assert sorted(files) == sorted(list_inputs([folder], recursive=True)) and len(set(files)) == len(files)
    s = predict_files(predictor, [folder], out, recursive=True, resume=True, workers=0)
    assert s.written == 0 and s.skipped == 16


def test_parquet_output_resume_and_a_killed_journal(predictor, folder, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "r.parquet"
    predict_files(predictor, [folder], out, workers=0)
    rows = read_rows(out)
    assert len(rows) == 14 and list(rows[0]) == list(COLUMNS) and not (tmp_path / "r.parquet.partial.jsonl").exists()
    ok = next(r for r in rows if r["status"] == "ok")
    assert isinstance(ok["digit"], int) and isinstance(ok["p0"], float)
    assert rows[1]["status"] == "error" and rows[1]["digit"] is None and rows[1]["p0"] is None
    s = predict_files(predictor, [folder], out, recursive=True, resume=True, workers=0)  # a finished file grows
    assert (s.skipped, s.written) == (14, 2) and [r["file"] for r in read_rows(out)] == list_inputs([folder], True)
    # a job killed before the end leaves its rows in the journal; a partial last line is dropped on resume
    out2 = tmp_path / "k.parquet"
    journal = tmp_path / "k.parquet.partial.jsonl"
    journal.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + '{"fi')
    assert read_done(out2) == {r["key"] for r in rows[:3]}
    s = predict_files(predictor, [folder], out2, recursive=True, resume=True, workers=0)
    assert (s.skipped, s.written) == (3, 13) and not journal.exists()
    assert sorted(r["file"] for r in read_rows(out2)) == sorted(list_inputs([folder], True))


def test_output_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"must end in \.csv, \.jsonl, \.parquet"):
        check_out(tmp_path / "r.txt")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(ConfigError, match="needs pyarrow") as e:
        check_out(tmp_path / "r.parquet")
    assert "\n" not in str(e.value)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()] if path.exists() else []
    except OSError:  # gone meanwhile
        return []


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren...: the decoding workers are the fork server's children, not the job's."""
    out, todo = [], _children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_cli_killed_job_resumes_with_every_file_once(onnx_run, mnist, tmp_path):
    scans = tmp_path / "scans"
    blobs = [png(mnist.test.images[i], invert=True) for i in range(10)]
    n = 3000
    for i in range(n):
        sub = scans / f"{i // 1000}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:05d}.png").write_bytes(blobs[i % 10])
    out = tmp_path / "x.csv"
    cmd = [sys.executable, "-m", "digitlab.cli", "predict", str(onnx_run), str(scans), "--recursive", "--out",
           str(out), "--backend", "onnx", "--batch-size", "8", "--workers", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    rows_at_kill = 0
    workers: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _descendants(proc.pid) or workers
        if out.exists() and (rows_at_kill := out.read_bytes().count(b"\n") - 1) >= 40:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"finished before the kill: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert 40 <= rows_at_kill < n
    if Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():  # Linux: the pool was seen
        assert len(workers) >= 3  # two decoding processes (+ the fork server and the resource tracker)
    # the decoding processes notice that their parent is gone and exit, rather than wait forever
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)

    kept = read_rows(out) if out.read_bytes().endswith(b"\n") else None  # (the last row may be cut off)
    link = tmp_path / "link"  # resumed through a symlink, with a "/." on the end: the same files all the same
    link.symlink_to(scans, target_is_directory=True)
    r = run_cli("predict", onnx_run, f"{link}/.", "--recursive", "--out", out, "--backend", "onnx", "--resume",
                "--batch-size", "256")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "already there" in r.stdout and "images/s" in r.stdout and "Traceback" not in r.stderr
    rows = read_rows(out)
    keys = [row["key"] for row in rows]
    assert len(keys) == n and set(keys) == {p.relative_to(scans).as_posix() for p in scans.rglob("*.png")}
    assert {os.path.realpath(row["file"]) for row in rows} == {str(p.resolve()) for p in scans.rglob("*.png")}
    assert {row["status"] for row in rows} <= {"ok", "not_a_digit"}
    if kept is not None:
        assert rows[: len(kept)] == kept  # the rows written before the kill stay as they were
    assert out.read_text().count("file,key,digit,confidence") == 1


def test_cli_kaggle_submission(tiny_run, mnist, tmp_path):
    images = mnist.test.images[:7]
    header = ",".join(f"pixel{i}" for i in range(784))
    csv_path = tmp_path / "test.csv"
    csv_path.write_text(header + "\n" + "".join(",".join(map(str, a.ravel())) + "\n" for a in images))
    sub = tmp_path / "out" / "submission.csv"
    r = run_cli("predict", tiny_run, csv_path, "--kaggle-submission", sub)
    assert r.returncode == 0, r.stderr
    lines = sub.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 8
    ids, labels = zip(*(map(int, line.split(",")) for line in lines[1:]), strict=True)
    assert list(ids) == list(range(1, 8))
    plain = Predictor.from_run(tiny_run, tta=False)  # what `digitlab predict` runs unless given --tta
    assert list(labels) == plain.predict_array(images).argmax(1).tolist()
    assert kaggle_submission(plain, csv_path, tmp_path / "again.csv", batch_size=3) == 7
    assert (tmp_path / "again.csv").read_text() == sub.read_text()


def test_cli_batch_mode_rejects_bad_combinations(tiny_run, folder, tmp_path):
    r = run_cli("predict", tiny_run, folder, "--out", tmp_path / "r.txt")
    assert r.returncode == 1 and "must end in" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("predict", tiny_run, folder)
    assert r.returncode == 2 and "--out" in r.stderr
    assert os.listdir(tmp_path) == []
