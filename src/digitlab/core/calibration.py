"""A run's calibration.json: its one reader (every field checked) and its writer; the fitting is in evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digitlab.core.errors import RunDirError
from digitlab.core.jsonfile import json_number, read_json_object, write_json
from digitlab.core.rundir import RunDir

OOD_SCORES = ("energy", "max_logit")  # the logit scores a "not a digit" rule may threshold


@dataclass(frozen=True)
class Calibration:
    """A run's calibration.json, validated: the temperature, the "not a digit" rule's fields (score, threshold,
    temperature, ink_max; None: the file has no rule) and the whole file (fit figures, provenance) for display."""

    temperature: float
    ood: dict[str, Any] | None
    data: dict[str, Any]


def _check_ood(d: Any, path: Path) -> dict[str, Any]:
    where = f"{path}: ood"
    if not isinstance(d, dict):
        raise RunDirError(f"{where} must be a JSON object with a score and a threshold")
    if d.get("score", "energy") not in OOD_SCORES:
        raise RunDirError(f"{where}.score must be one of {', '.join(OOD_SCORES)}, not {d.get('score')!r}")
    threshold = json_number(d.get("threshold"))
    if threshold is None:
        raise RunDirError(f"{where}.threshold must be a finite number, not {d.get('threshold')!r}")
    t = json_number(d.get("temperature", 1.0))
    if t is None or t <= 0:
        raise RunDirError(f"{where}.temperature must be a finite number above 0, not {d.get('temperature')!r}")
    ink = d.get("ink_max")
    if ink is not None and not (json_number(ink) is not None and 0 <= ink <= 1):
        raise RunDirError(f"{where}.ink_max must be null or a number in [0, 1], not {ink!r}")
    return {"score": str(d.get("score", "energy")), "threshold": threshold, "temperature": t,
            "ink_max": None if ink is None else float(ink)}  # fmt: skip


def load_calibration(run: Path | RunDir) -> Calibration | None:
    """RUN/calibration.json checked field by field (one-line RunDirError when broken); None when there is none.

    The temperature must be a finite number above 0; an "ood" rule, when present, needs a known score, a finite
    threshold and temperature, and an ink_max in [0, 1] or null.
    """
    rd = run if isinstance(run, RunDir) else RunDir(Path(run))
    if not rd.calibration.exists():
        return None
    data = read_json_object(rd.calibration)
    t = json_number(data.get("temperature"))
    if t is None or t <= 0:
        got = "nothing" if "temperature" not in data else repr(data["temperature"])
        raise RunDirError(f"{rd.calibration}: temperature must be a finite number above 0, not {got} "
                          f"(refit it: `digitlab calibrate {rd.root}`)")  # fmt: skip
    ood = _check_ood(data["ood"], rd.calibration) if data.get("ood") is not None else None
    return Calibration(t, ood, data)


def read_calibration(run: Path | RunDir) -> dict[str, Any]:
    """RUN/calibration.json as a dict, validated as `load_calibration` does ({} when the run has none)."""
    cal = load_calibration(run)
    return {} if cal is None else cal.data


def read_temperature(run: Path | RunDir) -> float:
    """The temperature in RUN/calibration.json (validated), or 1.0 when the run is uncalibrated."""
    cal = load_calibration(run)
    return 1.0 if cal is None else cal.temperature


def write_calibration(run: Path | RunDir, data: dict[str, Any]) -> Path:
    """Write RUN/calibration.json atomically."""
    rd = run if isinstance(run, RunDir) else RunDir(Path(run))
    return write_json(rd.calibration, data)
