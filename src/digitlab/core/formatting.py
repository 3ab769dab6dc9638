"""Figures as display strings, with a dash where a figure is missing: one rule for reports, the CLI and the demo."""

from __future__ import annotations

from typing import Any

DASH = "—"


def pct(x: Any, digits: int = 2) -> str:
    """A fraction as a percentage (0.9963 -> "99.63%"); "—" when it is not a number."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return DASH
    return f"{100 * x:.{digits}f}%"


def num(x: Any, fmt: str = "{:,}") -> str:
    """A number through `fmt` ("{:,}" -> "70,320"); "—" when it is not a number."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return DASH
    return fmt.format(x)
