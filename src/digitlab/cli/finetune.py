"""Command-line interface of fine-tuning: `digitlab finetune RUN --feedback URL --out NEW`."""

from __future__ import annotations

from pathlib import Path

import typer

from digitlab.cli.base import console
from digitlab.cli.feedback import DB_ENV
from digitlab.training.finetune import DISTILL, REPLAY, STYLE

FEEDBACK_HELP = ("The feedback store, a URL as `digitlab feedback --db` takes (default: $DIGITLAB_FEEDBACK_DB, "
                 "else $XDG_DATA_HOME/digitlab/feedback.db).")  # fmt: skip


def finetune(
    run: Path = typer.Argument(..., help="Run directory to start from (its best checkpoint)."),  # noqa: B008
    out: Path = typer.Option(..., "--out", help="New run directory to create (never overwritten)."),  # noqa: B008
    feedback: str | None = typer.Option(None, "--feedback", envvar=DB_ENV, show_envvar=False, help=FEEDBACK_HELP),
    model: str | None = typer.Option(None, "--model", help="Use only the feedback collected on this model id."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Training steps (default: scaled to the feedback)."),
    replay: float = typer.Option(REPLAY, "--replay", help="Share of each batch drawn from RUN's MNIST training split."),
    holdout: float = typer.Option(0.2, "--holdout", help="Share of the feedback held out, by whole sessions."),
    distill: float = typer.Option(DISTILL, "--distill", help="Weight of keeping RUN's answers on the MNIST replay."),
    style: float = typer.Option(STYLE, "--style", help="Slant and width jitter of the feedback images (0: off)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out sessions, the batches and the augmentation."),
) -> None:
    """Fine-tune RUN on users' feedback (mixed with MNIST replay) into a new run: calibrated, evaluated, compared.

    Sessions held out of training show what the users' digits gain; the MNIST test set shows what is kept.
    """
    from rich.table import Table

    from digitlab.evaluation.finetune import FinetuneConfig, finetune_run
    from digitlab.evaluation.sections import comparison_rows

    ft = FinetuneConfig(
        feedback=feedback,
        model=model,
        steps=steps,
        replay=replay,
        holdout=holdout,
        seed=seed,
        distill=distill,
        style=style,
    )
    with console.status("fine-tuning…") as status:
        result = finetune_run(run, out, ft, progress=lambda msg: status.update(f"{msg}…"))
    f = result.metrics["finetune"]
    fb, sp, o, tr = f["feedback"], f["split"], f["options"], f["training"]
    console.print(f"feedback: {fb['rows']:,} row(s) from {fb['url']}"
                  + ("" if fb["model"] is None else f" (model {fb['model']})")
                  + f", {fb['skipped_empty']:,} seen as empty left out; trained on {sp['train_rows']:,} row(s) of "
                  f"{sp['train_sessions']} session(s), held out {sp['held_out_rows']:,} of {sp['held_out_sessions']} "
                  f"session(s) (seed {sp['seed']})", highlight=False, soft_wrap=True)  # fmt: skip
    console.print(f"training: {o['steps']:,} steps of {o['feedback_per_batch']} feedback + {o['replay_per_batch']} "
                  f"MNIST images, {o['optimizer']} lr {o['lr']:.3g}, {tr['seconds']:.1f} s; {tr['precision']}",
                  highlight=False, soft_wrap=True)  # fmt: skip
    table = Table(title=f"{Path(run).name} → {out.name}")
    for col in ("set", "n", "before", "after", "refused (not a digit)"):
        table.add_column(col, justify="left" if col == "set" else "right")
    for name, n, before, after, refused in comparison_rows(result.metrics):
        table.add_row(name, f"{n:,}", before, f"[bold]{after}[/]", refused)
    console.print(table)
    console.print(f"[bold green]done[/] in {result.seconds:.0f} s: {out} (report: {out / 'report.md'})",
                  highlight=False, soft_wrap=True)  # fmt: skip
