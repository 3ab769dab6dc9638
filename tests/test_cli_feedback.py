"""`digitlab feedback stats|export|import|delete`: Rich output, a round trip through an export folder into
PostgreSQL, and one-line errors for bad input (through the real entry point)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import run_cli
from digitlab.cli import app
from digitlab.data.datasets import load_image_folder
from digitlab.data.feedback_store import FeedbackStore
from test_feedback_store import sample_fields


@pytest.fixture
def db(tmp_path) -> str:
    """A SQLite store with 6 rows: labels 0, 1, 2, 0, 1, 2; the model right on the first four."""
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    with FeedbackStore.open(url) as store:
        for i in range(6):
            store.add(**sample_fields(i, i % 3, i % 3 if i < 4 else (i + 1) % 3, model="fast" if i % 2 else "robust"))
    return url


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_stats(db):
    out = invoke("feedback", "stats", "--db", db)
    assert "6 feedback row(s)" in out and "66.7%" in out  # 4 of 6
    lines = [line for line in out.splitlines() if "│" in line]
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in lines)}
    assert rows["0"] == ["2", "100.0%"] and rows["1"] == ["2", "50.0%"] and rows["9"] == ["0", "—"]
    assert rows["fast"] == ["3", "66.7%"] and rows["robust"] == ["3", "66.7%"]


def test_export_import_delete_round_trip(db, tmp_path, pg_url):
    out = tmp_path / "export"
    assert "exported 6 row(s)" in invoke("feedback", "export", "--db", db, "--out", str(out))
    assert len(load_image_folder(out)) == 6
    assert "imported 6 row(s)" in invoke("feedback", "import", str(out), "--db", pg_url)
    assert "imported 0 row(s)" in invoke("feedback", "import", str(out), "--db", pg_url)
    with FeedbackStore.open(db) as a, FeedbackStore.open(pg_url) as b:
        assert [r.to_json() for r in a.rows()] == [r.to_json() for r in b.rows()]
        victim = next(b.rows()).id
    assert f"deleted {victim}" in invoke("feedback", "delete", victim, "--db", pg_url)
    with FeedbackStore.open(pg_url) as b:
        assert b.count() == 5 and b.get(victim) is None
    assert "imported 1 row(s)" in invoke("feedback", "import", db, "--db", pg_url)  # from a store's URL


def test_the_database_comes_from_the_environment_too(db, monkeypatch):
    monkeypatch.setenv("DIGITLAB_FEEDBACK_DB", db)
    assert "6 feedback row(s)" in invoke("feedback", "stats")


def test_bad_input_is_one_line(db, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    cases = [
        (["stats", "--db", "mysql://u@h/d"], "unsupported database 'mysql'"),
        (["stats", "--db", str(tmp_path / "missing.db")], "no feedback database at"),
        (["stats", "--db", "postgresql://u:secret@127.0.0.1:1/d"], "cannot open it"),
        (["export", "--db", db, "--out", str(tmp_path / "full")], "not an empty folder"),
        (["import", str(tmp_path / "nowhere"), "--db", db], "no such folder"),
        (["import", str(tmp_path / "full"), "--db", db], "not a feedback export"),
        (["delete", "0b5e8f8e-3c1e-4f43-9d55-5f1f1b2d8e10", "--db", db], "no feedback with id"),
    ]
    for args, message in cases:
        res = run_cli("feedback", *args)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert res.stderr.startswith("error:") and message in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        assert "secret" not in res.stderr
    assert not (tmp_path / "missing.db").exists()
    with FeedbackStore.open(db) as store:
        assert store.count() == 6  # nothing deleted or imported
