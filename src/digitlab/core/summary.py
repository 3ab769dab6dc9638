"""A run's headline figures (preset, size, accuracy, calibration), read leniently from its files for display."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digitlab.core.jsonfile import json_number, read_json_lenient
from digitlab.core.rundir import RunDir


def _text(*values: Any) -> str | None:
    """The first of `values` that is set, as text."""
    return next((str(v) for v in values if v), None)


def _whole(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


@dataclass(frozen=True)
class RunFacts:
    """What `digitlab runs`, the demo's Model tab and the API's /v1/model show of a run; None where a figure is
    missing (a run being trained, not evaluated yet, or a file that cannot be read)."""

    preset: str | None
    model: str | None
    params: int | None
    epochs: int | None
    train_seconds: float | None
    val_accuracy: float | None
    test_accuracy: float | None
    test_ci95: tuple[float, float] | None
    test_n: int | None
    test_errors: int | None
    nll: float | None
    ece: float | None
    temperature: float | None


def run_facts(run: Path | RunDir) -> RunFacts:
    """The headline figures in RUN/metrics.json, with RUN/config.json's preset and model where metrics.json has none."""
    rd = run if isinstance(run, RunDir) else RunDir(Path(run))
    m, cfg = read_json_lenient(rd.metrics), read_json_lenient(rd.config)
    val, test = m.get("val") or {}, m.get("test") or {}
    ci = test.get("accuracy_ci95")
    bounds = [json_number(v) for v in ci] if isinstance(ci, list) and len(ci) == 2 else [None, None]
    return RunFacts(
        preset=_text(m.get("preset"), cfg.get("preset")),
        model=_text(m.get("model"), cfg.get("model")),
        params=_whole(m.get("params")),
        epochs=_whole(m.get("epochs")),
        train_seconds=json_number(m.get("train_seconds")),
        val_accuracy=json_number(val.get("accuracy")),
        test_accuracy=json_number(test.get("accuracy")),
        test_ci95=None if None in bounds else (bounds[0], bounds[1]),  # type: ignore[arg-type]
        test_n=_whole(test.get("n")),
        test_errors=_whole(test.get("errors")),
        nll=json_number(test.get("nll")),
        ece=json_number(test.get("ece")),
        temperature=json_number(test.get("temperature")),
    )
