"""The run pipeline: train (or build an ensemble), calibrate on validation, evaluate on the test set, export ONNX.

    digitlab train --preset fast --out runs/fast             # `train`
    digitlab ensemble runs/a runs/b --out runs/ens           # `make_ensemble`

Training (`digitlab.training`) makes the weights and their validation figures; what follows is here, in this
order: the temperature and the "not a digit" rule fitted on the validation logits (calibration.json), the
official test set read once (metrics.json "test", report.md, plots), then model.onnx, so that `digitlab serve`
answers with the ONNX backend at once. Without the test evaluation (`evaluate_test=False`, `--no-test`) there is
no export either: its parity check reads test images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from digitlab.core.config import TrainConfig
from digitlab.core.rundir import RunDir
from digitlab.data.datasets import Dataset
from digitlab.evaluation.calibrate import calibrate_split
from digitlab.evaluation.evaluate import evaluate_run
from digitlab.inference.export import export_onnx
from digitlab.training.ensemble import build_ensemble_run
from digitlab.training.loop import Finished, Reporter, TrainResult, run_training

__all__ = ["make_ensemble", "train"]


def train(
    config: TrainConfig | None,
    out: Path,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] | None = None,
    dataset: Dataset | None = None,
    evaluate_test: bool = True,
) -> TrainResult:
    """Train `config` into run directory `out` (or, with `resume`, continue it: see `run_training`), then
    calibrate, evaluate on the test set (unless not `evaluate_test`) and export model.onnx.

    A stop request (`should_stop`, SIGINT, SIGTERM) raises `Interrupted` after saving `last.pt`; from the end of
    training on it is immediate, and `resume` redoes calibration, evaluation and export.
    """
    return run_training(config, out, resume=resume, reporter=reporter, should_stop=should_stop, dataset=dataset,
                        after=partial(_after_training, evaluate_test=evaluate_test))  # fmt: skip


def _after_training(run: Finished, evaluate_test: bool) -> dict[str, Any]:
    metrics = run.metrics
    if run.val_logits is not None:  # temperature and "not a digit" threshold, fitted on these validation logits
        run.check()
        calibrate_split(
            run.rd, run.model, run.val, run.val_logits, run.config, run.device, val_plain_logits=run.val_plain_logits
        )
    if evaluate_test:
        run.check()
        metrics = _evaluate_and_export(run.rd, run.check)
    return metrics


def _evaluate_and_export(rd: RunDir, check: Callable[[], None], device: str | None = None,
                         say: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:  # fmt: skip
    """The official test set, read once, then model.onnx (checked against PyTorch): metrics.json as written."""
    metrics = evaluate_run(rd, device=device)
    check()
    say("exporting model.onnx")
    return {**metrics, "export": export_onnx(rd)}


def make_ensemble(
    runs: Sequence[Path | str],
    out: Path | str,
    *,
    tta: bool | None = None,
    device: str | None = None,
    dataset: Dataset | None = None,
    sizes: dict[str, int | None] | None = None,
    evaluate_test: bool = True,
    progress: Callable[[str], None] | None = None,
    selection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Average `runs` into the new run directory `out` (`digitlab.training.ensemble`), calibrate it on the
    members' shared validation split, then evaluate it on the test set and export it; returns its metrics.json.

    `tta`: test-time augmentation for the ensemble (None: on when any member used it). `dataset`: the members'
    dataset already loaded (tests), else loaded from their config. `sizes`: the out-of-distribution fitting sets
    (default as at the end of training). With `evaluate_test` (default) the official test set is read last, once.
    `selection`: how the runs were chosen (the record `select_members` returns), kept in metrics.json.
    """
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    ens = build_ensemble_run(runs, out, tta=tta, device=device, dataset=dataset, progress=say, selection=selection)
    say("fitting the ensemble's temperature and out-of-distribution threshold on the validation split")
    calibrate_split(ens.rd, ens.model, ens.val, ens.val_logits, ens.config, ens.device, sizes)
    metrics = ens.metrics
    metrics["ensemble"]["build_seconds"] = round(time.perf_counter() - t0, 3)
    ens.rd.write_json(ens.rd.metrics, metrics)
    if evaluate_test:
        say("evaluating on the official test set (read once, now)")
        metrics = _evaluate_and_export(ens.rd, lambda: None, device=str(ens.device), say=say)
    return metrics
