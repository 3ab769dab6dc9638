"""Command-line interface of the feedback store: `digitlab feedback stats|export|import|delete`, and serve's store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from digitlab.cli.base import console, err_console
from digitlab.core.errors import DigitlabError
from digitlab.core.formatting import pct

if TYPE_CHECKING:  # SQLAlchemy loads only for the commands that open a store
    from digitlab.data.feedback_store import FeedbackStore

feedback_app = typer.Typer(no_args_is_help=True, help="Inspect, export, import and delete users' feedback.")

DB_ENV = "DIGITLAB_FEEDBACK_DB"  # digitlab.data.feedback_db.URL_ENV (not imported: --help must not load SQLAlchemy)
DB_HELP = ("Feedback store: sqlite:///FILE, postgresql+psycopg://USER@HOST/DB, or a file path (default: "
           "$DIGITLAB_FEEDBACK_DB, else $XDG_DATA_HOME/digitlab/feedback.db).")  # fmt: skip

FEEDBACK_DB_HELP = ("Store /v1/feedback rows here, a URL as `digitlab feedback --db` takes (default: "
                    "$XDG_DATA_HOME/digitlab/feedback.db, when it can be opened).")  # fmt: skip
DEMO_FEEDBACK_DB_HELP = ("Store the demo's feedback (for visitors who opt in) here, a URL as `digitlab feedback --db` "
                         "takes (default: $XDG_DATA_HOME/digitlab/feedback.db, when it can be opened).")  # fmt: skip
DB_OPTION = typer.Option(None, "--db", envvar=DB_ENV, help=DB_HELP, show_envvar=False)


def _open(db: str | None, *, create: bool = False) -> FeedbackStore:
    from digitlab.data.feedback_store import FeedbackStore

    return FeedbackStore.open(db, create=create)


@feedback_app.command("stats")
def feedback_stats(db: str | None = DB_OPTION) -> None:
    """Rows by label, how often the model's answer was the label, and the same by model."""
    from rich.table import Table

    with _open(db) as store:
        s = store.stats()
        url = store.url

    console.print(f"{s.total:,} feedback row(s) in {url}; the model's answer was the label in {pct(s.agreement, 1)}",
                  highlight=False, soft_wrap=True)  # fmt: skip
    table = Table(title="by label")
    for col in ("label", "rows", "model agreed"):
        table.add_column(col, justify="right")
    for d in range(10):
        n = s.by_label[d]
        table.add_row(str(d), f"{n:,}", pct(s.agreed_by_label[d] / n if n else None, 1))
    console.print(table)
    if s.by_model:
        models = Table(title="by model")
        for col in ("model", "rows", "model agreed"):
            models.add_column(col, justify="left" if col == "model" else "right")
        for m in s.by_model:
            models.add_row(m.model, f"{m.count:,}", pct(m.agreement, 1))
        console.print(models)


@feedback_app.command("export")
def feedback_export(
    out: Path = typer.Option(..., "--out", help="New (or empty) folder: OUT/<label>/<id>.png and OUT/feedback.jsonl."),  # noqa: B008
    db: str | None = DB_OPTION,
) -> None:
    """Write every row: the 28x28 the model saw as OUT/<label>/<id>.png (train on it with `--data OUT`), and all
    fields, the original images included, in OUT/feedback.jsonl (what `digitlab feedback import` reads)."""
    with _open(db) as store, console.status(f"exporting to {out}…"):
        n = store.export(out)
    console.print(f"exported {n:,} row(s) to {out}", highlight=False, soft_wrap=True)


@feedback_app.command("import")
def feedback_import(
    source: str = typer.Argument(..., help="An export folder (`digitlab feedback export`) or another store's URL."),
    db: str | None = DB_OPTION,
) -> None:
    """Add the rows of an export folder or of another store; rows whose id is already here are skipped."""
    with _open(db, create=True) as store, console.status(f"importing {source}…"):
        added, skipped = store.import_from(source)
    console.print(f"imported {added:,} row(s) into {store.url}; {skipped:,} already there", highlight=False,
                  soft_wrap=True)  # fmt: skip


@feedback_app.command("delete")
def feedback_delete(
    row_id: str = typer.Argument(..., metavar="ID", help="The row's id (as POST /v1/feedback returned it)."),
    db: str | None = DB_OPTION,
) -> None:
    """Delete one row, its images included."""
    with _open(db) as store:
        if not store.delete(row_id):
            raise DigitlabError(f"no feedback with id {row_id!r} in {store.url}")
    console.print(f"deleted {row_id}", highlight=False)


def serve_feedback_db(url: str | None, disabled: bool, without: str = "/v1/feedback") -> str | None:
    """The store `digitlab serve` gives its workers (and `digitlab app` its page), opened (and migrated) here
    once, so that a bad URL or an unreachable database stops the server at start, in one line. None: no
    feedback (`without`, named in the warning). Without a URL the default store is used when it can be opened;
    else a warning, and the server runs without feedback."""
    from digitlab.data.feedback_store import FeedbackStore, shown_url

    if disabled:  # (over $DIGITLAB_FEEDBACK_DB too)
        return None
    try:
        with FeedbackStore.open(url) as store:
            chosen = url if url is not None else store.engine.url.render_as_string(hide_password=False)
    except DigitlabError as e:
        if url is not None:
            raise
        err_console.print(f"[bold yellow]warning:[/] serving without {without}: {e} (give --feedback-db URL, "
                          "or --no-feedback)", highlight=False, soft_wrap=True)  # fmt: skip
        return None
    console.print(f"feedback: {shown_url(chosen)}", highlight=False, soft_wrap=True)
    return chosen
