"""The `digitlab` command: every command and command group in the order `digitlab --help` lists them, and main."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import typer

from digitlab.cli import data, evaluate, feedback, finetune, predict, runs, serve, train
from digitlab.cli.base import err_console
from digitlab.core.errors import DigitlabError, DigitlabWarning

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and serve digit recognizers.")
app.command()(train.train)
app.command()(evaluate.evaluate)
app.command()(predict.predict)
app.command()(predict.read)
app.command()(evaluate.calibrate)
app.command("export")(serve.export_command)
app.command("app")(serve.app_command)
app.command()(serve.serve)
app.command()(train.ensemble)
app.command()(finetune.finetune)
app.add_typer(data.data_app, name="data")
app.add_typer(runs.runs_app, name="runs")
app.add_typer(feedback.feedback_app, name="feedback")


def main() -> None:
    """Console-script entry point: user errors print one line, never a traceback (and warnings of ours one line)."""
    show = warnings.showwarning

    def one_line(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DigitlabWarning):
            err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
        else:
            show(message, category, *args, **kwargs)

    warnings.showwarning = one_line
    try:
        app()
    except DigitlabError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
