"""The feedback store on real databases (SQLite files and a throw-away PostgreSQL): schema migrations, concurrent
writers in several processes, rows and stats, refusals, export to a training folder and import back."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time
from datetime import timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from digitlab.core.errors import ConfigError, DataError
from digitlab.data.datasets import load_image_folder
from digitlab.data.feedback_db import (
    MIGRATIONS,
    SCHEMA_VERSION,
    FeedbackStoreError,
    InvalidFeedback,
    migrate,
    open_engine,
)
from digitlab.data.feedback_store import MANIFEST, FeedbackStore, shown_url


def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    """A small, distinct image file per seed (what a user might upload)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)).convert("RGB").save(buf, fmt)
    return buf.getvalue()


def sample_fields(seed: int, label: int, predicted: int | None, **extra) -> dict:
    """`FeedbackStore.add` keyword arguments for a distinct row."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(10)).tolist()
    status = "ok" if predicted is not None else "not_a_digit"
    return {"image": image_bytes(seed), "model_input": rng.integers(0, 256, (28, 28), dtype=np.uint8), "label": label,
            "predicted": predicted, "status": status, "probabilities": probs, "model": "fast", "source": "api",
            **extra}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """An empty store's URL: a new SQLite file, or a new database in the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("pg_url")


def versions(url: str) -> list[int]:
    engine = open_engine(url)
    try:
        with engine.connect() as c:
            return [r[0] for r in c.execute(sa.text("SELECT version FROM schema_version ORDER BY version"))]
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------------ schema


def test_migrations_from_empty_then_reopen(url):
    with FeedbackStore.open(url) as store:
        assert store.count() == 0
        assert migrate(store.engine) == []  # re-applying does nothing
    assert versions(url) == [v for v, _ in MIGRATIONS] and MIGRATIONS[-1][0] == SCHEMA_VERSION
    with FeedbackStore.open(url) as store:  # reopen: the data and the versions stay as they were
        store.add(**sample_fields(1, 3, 3))
    with FeedbackStore.open(url) as store:
        assert store.count() == 1
    assert versions(url) == [v for v, _ in MIGRATIONS]


def test_migrations_apply_in_order_once_and_refuse_a_newer_schema(url):
    done: list[int] = []

    def step(version: int, sql: str):
        def apply(conn):
            done.append(version)
            conn.execute(sa.text(sql))

        return (version, apply)

    extra = [step(3, "CREATE INDEX feedback_status ON feedback (status)"),
             step(2, "ALTER TABLE feedback ADD COLUMN note VARCHAR(20)")]  # fmt: skip
    engine = open_engine(url)
    try:
        assert migrate(engine, [*MIGRATIONS, *extra]) == [1, 2, 3]
        assert done == [2, 3]  # in version order, whatever the list's order
        assert migrate(engine, [*MIGRATIONS, *extra]) == [] and done == [2, 3]
        with engine.connect() as c:
            assert "note" in {col["name"] for col in sa.inspect(c).get_columns("feedback")}
    finally:
        engine.dispose()
    with pytest.raises(FeedbackStoreError, match="schema version 3, newer than this digitlab knows"):
        FeedbackStore.open(url)  # this digitlab knows version 1 only


def test_a_failed_migration_leaves_no_half_made_schema(url):
    def broken(conn):
        conn.execute(sa.text("CREATE TABLE half_made (x INTEGER)"))
        conn.execute(sa.text("SELECT * FROM no_such_table"))

    engine = open_engine(url)
    try:
        with pytest.raises(FeedbackStoreError):
            migrate(engine, [*MIGRATIONS, (2, broken)])
        with engine.connect() as c:
            assert "half_made" not in sa.inspect(c).get_table_names()
            assert "feedback" not in sa.inspect(c).get_table_names()  # version 1 was in the same transaction
        assert migrate(engine) == [1]
    finally:
        engine.dispose()


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from digitlab.data.feedback_store import FeedbackStore
    url, start, n, worker = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    time.sleep(max(0.0, start - time.time()))  # all writers open the (empty) database at the same moment
    with FeedbackStore.open(url) as store:
        for i in range(n):
            pixels = np.full((28, 28), i % 256, np.uint8)
            print(store.add(image=b"PNG bytes %d %d" % (worker, i), model_input=pixels, label=i % 10,
                            predicted=(i * 7) % 10, probabilities=[0.1] * 10, model=f"m{worker}", source="api",
                            media_type="image/png", session=f"w{worker}"), flush=True)
""")


def test_concurrent_writers_in_several_processes(url):
    """Four processes open the empty store at once (concurrent migrations) and write 40 rows each: every row is
    there, the migration ran once."""
    procs, n = 4, 40
    start = time.time() + 3.0  # after the interpreters have started
    children = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(start), str(n), str(w)], text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for w in range(procs)]  # fmt: skip
    ids = []
    for child in children:
        out, err = child.communicate(timeout=180)
        assert child.returncode == 0, err[-2000:]
        ids += out.split()
    assert len(ids) == len(set(ids)) == procs * n
    with FeedbackStore.open(url) as store:
        assert {r.id for r in store.rows()} == set(ids)
        s = store.stats()
        assert s.total == procs * n and sorted(m.count for m in s.by_model) == [n] * procs
        assert len(list(store.rows(session="w2"))) == n
    assert versions(url) == [1]


def test_sqlite_is_in_wal_mode_with_a_busy_timeout_and_full_sync(tmp_path):
    with FeedbackStore.open(tmp_path / "f.db") as store, store.engine.connect() as c:  # a path: a SQLite file
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
        assert c.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


# ------------------------------------------------------------------------------------------------ rows


def test_rows_round_trip_stats_and_delete(url):
    cases = [(1, 3, 3), (2, 3, 5), (3, 7, None), (4, 7, 7), (5, 0, 0)]  # (seed, label, predicted)
    with FeedbackStore.open(url) as store:
        ids = [store.add(**sample_fields(seed, label, predicted, session="s1" if seed < 3 else None))
               for seed, label, predicted in cases]  # fmt: skip
        jpeg = image_bytes(9, "JPEG")
        demo = store.add(**{**sample_fields(9, 9, 4, model="other", source="demo"), "image": jpeg})
        row = store.get(ids[0])
        want = sample_fields(1, 3, 3)
        assert row is not None and row.image == want["image"] and row.media_type == "image/png"
        assert np.array_equal(row.model_input, want["model_input"]) and row.model_input.dtype == np.uint8
        assert row.probabilities == want["probabilities"] and (row.label, row.predicted, row.status) == (3, 3, "ok")
        assert row.created_at.tzinfo is not None and row.created_at.utcoffset() == timezone.utc.utcoffset(None)
        assert (row.source, row.session, row.model) == ("api", "s1", "fast")
        other = store.get(demo)
        assert other.image == jpeg and other.media_type == "image/jpeg" and other.source == "demo"  # as sent
        assert store.get(ids[2]).status == "not_a_digit" and store.get(ids[2]).predicted is None

        s = store.stats()
        assert (s.total, s.agreed) == (6, 3) and s.agreement == pytest.approx(0.5)
        assert s.by_label == {0: 1, 1: 0, 2: 0, 3: 2, 4: 0, 5: 0, 6: 0, 7: 2, 8: 0, 9: 1}
        assert s.agreed_by_label[3] == 1 and s.agreed_by_label[7] == 1 and s.agreed_by_label[9] == 0
        assert [(m.model, m.count, m.agreed) for m in s.by_model] == [("fast", 5, 3), ("other", 1, 0)]
        assert [r.id for r in store.rows()] == [*ids, demo]  # oldest first
        assert {r.id for r in store.rows(session="s1")} == set(ids[:2])
        assert [r.id for r in store.rows(model="other")] == [demo]

        assert store.delete(ids[1]) is True and store.get(ids[1]) is None
        assert store.delete(ids[1]) is False and store.delete("not-a-uuid") is False
        assert store.get("not-a-uuid") is None
        assert store.count() == 5 and store.stats().agreement == pytest.approx(3 / 5)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"label": 10}, "label must be a digit"), ({"label": True}, "label must be a digit"),
     ({"label": "3"}, "label must be a digit"), ({"predicted": -1}, "predicted must be"),
     ({"status": "ok", "predicted": None}, "status 'ok'"), ({"status": "empty"}, "status 'empty'"),
     ({"status": "error"}, "status 'error'"), ({"probabilities": [0.1] * 9}, "ten numbers"),
     ({"probabilities": [float("nan")] * 10}, "ten numbers"), ({"source": "web"}, "source must be"),
     ({"session": ""}, "session must be"), ({"session": "x" * 129}, "session must be"),
     ({"session": "a\nb"}, "session must be"), ({"model": ""}, "model must be"), ({"image": b""}, "image must be"),
     ({"model_input": np.zeros((28, 27), np.uint8)}, "28x28 uint8"),
     ({"model_input": np.zeros((28, 28), np.float32)}, "28x28 uint8"), ({"id": "nope"}, "id must be a UUID")],
)  # fmt: skip
def test_bad_rows_are_refused_and_leave_the_store_unchanged(tmp_path, change, message):
    with FeedbackStore.open(tmp_path / "f.db") as store:
        store.add(**sample_fields(1, 2, 2))
        with pytest.raises(InvalidFeedback, match=message):
            store.add(**{**sample_fields(2, 4, 4), **change})
        assert store.count() == 1


def test_urls_and_their_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unsupported database 'mysql'"):
        FeedbackStore.open("mysql://u@h/db")
    with pytest.raises(ConfigError, match="not a database URL"):
        FeedbackStore.open("::not a url::/x://")
    with pytest.raises(FeedbackStoreError, match="no feedback database at"):
        FeedbackStore.open(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    # an unreachable server: one line, in seconds, the password not shown
    with pytest.raises(FeedbackStoreError, match="cannot open it") as e:
        FeedbackStore.open("postgresql://me:s3cret@127.0.0.1:1/db")
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value) and "postgresql+psycopg://me:***@" in str(e.value)
    assert shown_url("postgres://me:s3cret@h/db") == "postgresql+psycopg://me:***@h/db"
    monkeypatch.setenv("DIGITLAB_FEEDBACK_DB", f"sqlite:///{tmp_path / 'env.db'}")
    with FeedbackStore.open() as store:  # no URL: $DIGITLAB_FEEDBACK_DB
        store.add(**sample_fields(1, 1, 1))
    assert (tmp_path / "env.db").is_file()
    monkeypatch.delenv("DIGITLAB_FEEDBACK_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with FeedbackStore.open() as store:  # else the user's data folder
        assert store.url == f"sqlite:///{tmp_path / 'xdg' / 'digitlab' / 'feedback.db'}"


# ------------------------------------------------------------------------------------------------ export / import


def test_export_is_a_training_folder_and_imports_back_by_id(tmp_path, pg_url):
    src = FeedbackStore.open(tmp_path / "src.db")
    ids = [src.add(**sample_fields(seed, seed % 3, None if seed == 4 else seed % 2, session=f"s{seed % 2}"))
           for seed in range(7)]  # fmt: skip
    out = tmp_path / "export"
    assert src.export(out) == 7
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "2", MANIFEST]
    split = load_image_folder(out)  # what `digitlab train --data out` reads
    by_id = {r.id: r for r in src.rows()}
    assert len(split) == 7
    for label_dir in out.iterdir():
        for png in label_dir.glob("*.png"):
            r = by_id[png.stem]
            assert int(label_dir.name) == r.label
            assert np.array_equal(np.asarray(Image.open(png)), r.model_input)  # exactly the 28x28 the model saw
    with pytest.raises(DataError, match="not an empty folder"):
        src.export(out)

    with FeedbackStore.open(pg_url) as dst:  # SQLite -> PostgreSQL, through the folder
        assert dst.import_from(out) == (7, 0)
        assert dst.import_from(out) == (0, 7)  # idempotent by id
        assert [r.to_json() for r in dst.rows()] == [r.to_json() for r in src.rows()]  # every field, images too
        dst.delete(ids[0])
        assert dst.import_from(f"sqlite:///{tmp_path / 'src.db'}") == (1, 6)  # from another store's URL
        assert dst.count() == 7
    src.close()


def test_bad_exports_are_refused_whole(tmp_path):
    with FeedbackStore.open(tmp_path / "src.db") as src:
        for seed in range(3):
            src.add(**sample_fields(seed, seed, seed))
        src.export(tmp_path / "good")
    lines = (tmp_path / "good" / MANIFEST).read_text().splitlines()
    broken = json.loads(lines[3])
    broken["label"] = 12

    def export_with(name: str, manifest_lines: list[str] | None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        if manifest_lines is not None:
            (folder / MANIFEST).write_text("\n".join(manifest_lines) + "\n")
        return folder

    cases = [
        (export_with("none", None), "no feedback.jsonl in it"),
        (export_with("header", ['{"format": "something else"}', *lines[1:]]), "line 1: not a feedback export"),
        (export_with("label", [*lines[:3], json.dumps(broken)]), "line 4: label must be a digit"),
        (export_with("json", [*lines[:3], "{not json"]), "line 4:"),
        (export_with("field", [*lines[:3], json.dumps({k: v for k, v in broken.items() if k != "model"})]),
         "line 4: missing field 'model'"),
        (tmp_path / "missing", "no such folder"),
    ]  # fmt: skip
    with FeedbackStore.open(tmp_path / "dst.db") as dst:
        for folder, message in cases:
            with pytest.raises(DataError, match=message):
                dst.import_from(folder)
            assert dst.count() == 0, folder  # all or none: the good lines before the bad one are not kept
        assert dst.import_from(tmp_path / "good") == (3, 0)
