"""What every table builder shares: the JSON files' places and loader, and the cell formats (percent, seconds)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
BUNDLE = REPO / "src" / "digitlab" / "pretrained" / "default"  # the bundled run (core.rundir.BUNDLED)

# --------------------------------------------------------------------------------------------- formatting


def pct(x: float, digits: int = 2) -> str:
    """0.99624 -> '99.62%'."""
    return f"{100 * x:.{digits}f}%"


def pcts(xs: Iterable[float], digits: int = 2) -> str:
    """Several accuracies without the % sign: '99.63, 99.61, 99.62'."""
    return ", ".join(f"{100 * x:.{digits}f}" for x in xs)


def span(xs: Sequence[float]) -> str:
    """The lowest and highest of several accuracies: '99.71–99.81'."""
    return f"{100 * min(xs):.2f}–{100 * max(xs):.2f}"


def pp(a: float, b: float) -> str:
    """The difference of two accuracies in percentage points: '+0.04 pp'."""
    return f"{100 * (a - b):+.2f} pp".replace("-", "−")


def minutes(seconds: float, digits: int = 1) -> str:
    return f"{seconds / 60:.{digits}f}"


def secs(lo: float, hi: float) -> str:
    return f"{lo:.0f}–{hi:.0f} s"


def ratio(error: float, clean_error: float) -> str:
    """An error rate over the clean one, as MNIST-C reports it: '27×'."""
    return f"{error / clean_error:.0f}×"


def seed_list(seeds: Sequence[int]) -> str:
    """(4, 5, 6, 7, 8, 9) -> '4–9'; (1, 3, 4) -> '1, 3, 4'."""
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def row(*cells: object) -> str:
    return "|" + "|".join(f" {c} " if c != "" else " " for c in cells) + "|"


def table(header: Sequence[str], align: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    return "\n".join([row(*header), "|" + "|".join(align) + "|", *(row(*r) for r in rows)]) + "\n"


# --------------------------------------------------------------------------------------------- the data


@cache
def load(path: Path) -> Any:
    return json.loads(path.read_text())


def bench(name: str) -> Any:
    return load(RESULTS / f"{name}.json")


def bundle(name: str = "metrics") -> Any:
    return load(BUNDLE / f"{name}.json")
