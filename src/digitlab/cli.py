"""Command-line interface (Typer): maps options onto the library; errors become one red line and exit 1."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from digitlab.errors import DigitlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and serve digit recognizers.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect, verify, download and export datasets.")
runs_app = typer.Typer(no_args_is_help=True, help="List and compare run directories.")
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")

console = Console()
err_console = Console(stderr=True)


def main() -> None:
    """Console-script entry point: user errors print one line, never a traceback."""
    try:
        app()
    except DigitlabError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- train / evaluate


# ---------------------------------------------------------------------------------------------- data


# ---------------------------------------------------------------------------------------------- runs


if __name__ == "__main__":
    main()
