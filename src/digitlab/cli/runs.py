"""`digitlab runs list|compare`: run directories and their headline figures, side by side."""

from __future__ import annotations

from pathlib import Path

import typer

from digitlab.cli.base import console
from digitlab.core.formatting import DASH, num, pct
from digitlab.core.summary import run_facts

runs_app = typer.Typer(no_args_is_help=True, help="List and compare run directories.")


def _run_figures(run: Path) -> dict[str, str]:
    """The key figures of a run as display strings ('—' where a figure is missing)."""
    f = run_facts(run)
    ci = f.test_ci95
    return {
        "preset": f.preset or DASH,
        "model": f.model or DASH,
        "params": num(f.params),
        "epochs": num(f.epochs),
        "train seconds": num(f.train_seconds, "{:,.1f}"),
        "val accuracy": pct(f.val_accuracy),
        "test accuracy": pct(f.test_accuracy),
        "test 95% CI": f"{pct(ci[0])}–{pct(ci[1])}" if ci else DASH,
        "test errors": num(f.test_errors) + (f" / {f.test_n:,}" if f.test_n is not None else ""),
        "NLL": num(f.nll, "{:.4f}"),
        "ECE": pct(f.ece),
    }


@runs_app.command("list")
def runs_list(
    root: Path = typer.Argument(Path("runs"), help="Folder to search for run directories."),  # noqa: B008
) -> None:
    """List the run directories under ROOT with their headline figures."""
    from rich.table import Table

    from digitlab.core.errors import RunDirError

    if not root.is_dir():
        raise RunDirError(f"no runs folder at {root} — train one with `digitlab train --out {root}/<name>`")
    runs = sorted(p.parent for p in root.rglob("config.json"))
    if not runs:
        console.print(f"no runs under {root}", highlight=False)
        return
    table = Table(title=f"runs in {root}")
    table.add_column("run", style="bold", overflow="fold")
    cols = ("preset", "params", "val accuracy", "test accuracy", "train seconds")
    for col in cols:
        table.add_column(col, justify="left" if col == "preset" else "right")
    for run in runs:
        fig = _run_figures(run)
        table.add_row(run.relative_to(root).as_posix(), *(fig[c] for c in cols))
    console.print(table)


@runs_app.command("compare")
def runs_compare(runs: list[Path] = typer.Argument(..., help="Run directories to compare.")) -> None:  # noqa: B008
    """Compare runs side by side: one column per run, one row per key figure."""
    from rich.table import Table

    from digitlab.core.errors import RunDirError

    for run in runs:
        if not (run / "config.json").is_file():
            raise RunDirError(f"{run}: not a run directory (no config.json)")
    table = Table(title="run comparison")
    table.add_column("", style="bold")
    for run in runs:
        table.add_column(run.name or str(run), justify="right", overflow="fold")
    figures = [_run_figures(run) for run in runs]
    for key in figures[0]:
        table.add_row(key, *(f[key] for f in figures))
    console.print(table)
