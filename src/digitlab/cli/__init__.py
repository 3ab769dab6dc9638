"""The `digitlab` command (Typer): one module per command group; user errors become one red line and exit 1."""

from digitlab.cli.commands import app, main

__all__ = ["app", "main"]
