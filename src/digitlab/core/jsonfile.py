"""JSON files of a run: one strict reader (one error policy), a lenient one for display, an atomic writer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from digitlab.core.atomic import atomic_write_text
from digitlab.core.errors import RunDirError


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON object from `path`; anything else (unreadable, not JSON, not an object) is a one-line RunDirError."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunDirError(f"{path}: not valid JSON ({' '.join(str(e).split())[:120]})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return data


def read_json_lenient(path: str | Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when it is missing, unreadable or not an object (for display only)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write `data` as indented, key-sorted JSON atomically: a crash never leaves a half-written file."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def json_number(value: Any) -> float | None:
    """A JSON value as a finite float, or None when it is not a finite number (strings and booleans are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
