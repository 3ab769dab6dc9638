"""What every command shares: the consoles, the one-line error for bad output, format checks, common help."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

from digitlab.core.errors import DigitlabError

console = Console()
err_console = Console(stderr=True)

BACKEND_HELP = "torch, onnx or onnx-int8 (the ONNX files come from `digitlab export`, and from training)."
# Serving runs without test-time augmentation unless asked: it buys the bundled model nothing measurable.
TTA_HELP = ("Test-time augmentation: the mean over the image and four 1-pixel shifts, 5x the model's time. Off by "
            "default: it buys the bundled model nothing measurable on MNIST test (docs/serving.md).")  # fmt: skip
UNCALIBRATED_HELP = ("Use a run that has no calibration.json (raw softmax confidences, no 'not a digit' check) "
                     "instead of refusing it.")  # fmt: skip


def check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(allowed)}", param_hint="--format")


@contextlib.contextmanager
def stdout_errors() -> Iterator[None]:
    """Write to stdout inside this: a full disk (`> /dev/full`) or a closed pipe (`| head`) becomes a one-line
    error and exit 1, not a traceback (and not a second one when Python flushes stdout at exit)."""
    try:
        yield
        sys.stdout.flush()
    except OSError as e:  # ENOSPC, EFBIG, EPIPE (BrokenPipeError)...
        with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout without a file descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        raise DigitlabError(f"cannot write the output to stdout: {e.strerror or e}") from None
