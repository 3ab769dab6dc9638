"""`digitlab evaluate` (with the real-world and corruption suites) and `digitlab calibrate`, as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from digitlab.cli.base import console


def evaluate(
    run: Path = typer.Argument(..., help="Run directory written by `digitlab train`."),  # noqa: B008
    data: str | None = typer.Option(
        None, "--data", help="Evaluate on another dataset (name or path); results go to RUN/eval/<name>/."
    ),
    realworld: bool = typer.Option(
        False,
        "--realworld",
        help="Also score the non-MNIST sets in data/realworld/ (canvas, photo, fonts, lowres, pen, page).",
    ),
    robustness: bool = typer.Option(
        False, "--robustness", help="Also score MNIST-C's 15 corruptions of the test set, raw and preprocessed."
    ),
    robustness_limit: int = typer.Option(
        None, "--robustness-limit", help="Corrupt only the first N test images (quick looks; not the figure)."
    ),
) -> None:
    """Evaluate a run's best checkpoint on the official test set: metrics.json, report.md and plots."""
    from digitlab.evaluation.evaluate import evaluate_run

    with console.status("evaluating…") as status:
        metrics = evaluate_run(run, data=data, progress=lambda msg: status.update(f"{msg}…"))
    test = metrics["test"]
    lo, hi = test["accuracy_ci95"]
    console.print(
        f"[bold green]{test['dataset']}[/] test accuracy [bold]{test['accuracy']:.2%}[/] "
        f"(95% CI {lo:.2%}–{hi:.2%}; {test['errors']:,} errors of {test['n']:,})",
        highlight=False,
    )
    console.print(f"NLL {test['nll']:.4f}  ECE {test['ece']:.2%}  temperature {test['temperature']:g}")
    console.print(f"report: {Path(run) / test['report']}", highlight=False, soft_wrap=True)
    if realworld:
        _evaluate_realworld(run, test)
    if robustness:
        print_robustness(run, console, limit=robustness_limit)


def _evaluate_realworld(run: Path, test: dict) -> None:
    """Score the real-world sets (written into RUN/metrics.json and RUN/report.md) and print them as a table."""
    from rich.table import Table

    from digitlab.evaluation.realworld import evaluate_realworld

    with console.status("real-world sets…") as status:
        results = evaluate_realworld(run, progress=lambda msg: status.update(f"{msg}…"))
    table = Table(title="accuracy on real-world input", caption="naive resize: the whole picture squashed to 28x28")
    for col in ("set", "n", "digitlab preprocessing", "naive resize", "empty", "refused", "read"):
        table.add_column(col, justify="left" if col == "set" else "right")
    table.add_row(f"{test['dataset']} test", f"{test['n']:,}", f"{test['accuracy']:.2%}", "—", "—", "—", "—")
    for name, r in results.items():
        refused, read = (f"{r['refused']:.2%}", f"{r['read']:.2%}") if "read" in r else ("—", "—")
        table.add_row(name, f"{r['n']:,}", f"[bold]{r['accuracy']:.2%}[/]", f"{r['naive_accuracy']:.2%}",
                      f"{r['empty']:,}", refused, read)  # fmt: skip
    console.print(table)


def print_robustness(run: Path, console: Any, split: str = "test", limit: int | None = None) -> dict[str, Any]:
    """`digitlab evaluate --robustness`: run the suite under a Rich progress bar, then print its table."""
    from rich import progress as rp
    from rich.table import Table

    from digitlab.evaluation.robustness import evaluate_robustness
    from digitlab.evaluation.sections import error_ratio, suite_rows

    bar = rp.Progress(rp.TextColumn("[bold]robustness[/] {task.fields[stage]:<13}"), rp.BarColumn(),
                      rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TextColumn("ETA"),
                      rp.TimeRemainingColumn(), console=console, transient=True)  # fmt: skip
    task = bar.add_task("robustness", total=None, stage="")
    with bar:
        result = evaluate_robustness(run, split=split, limit=limit,
                                     progress=lambda stage, done, total: bar.update(task, completed=done, total=total,
                                                                                    stage=stage))  # fmt: skip
    clean = result["clean"]
    table = Table(
        title=f"MNIST-C corruptions ({result['n']:,} {split} images, seed {result['seed']})",
        caption="preprocessed: digitlab.data.preprocess + calibrated predictor; refusals count as not correct",
    )
    for col in ("images", "raw", "error × clean", "refused", "preprocessed", "refused "):
        table.add_column(col, justify="left" if col == "images" else "right")
    for name, s in suite_rows(result).items():
        table.add_row(name, f"{s['accuracy']:.2%}", error_ratio(1 - s["accuracy"], 1 - clean["accuracy"]),
                      f"{s['refused']:.2%}", f"{s['accuracy_preprocessed']:.2%}",
                      f"{s['refused_preprocessed']:.2%}")  # fmt: skip
    console.print(table)
    console.print(f"[bold]mean over corruptions {result['mean_accuracy']:.2%}[/] raw, "
                  f"{result['mean_accuracy_preprocessed']:.2%} preprocessed (clean {clean['accuracy']:.2%}; worst "
                  f"{result['worst']} {result['min_accuracy']:.2%})", highlight=False)  # fmt: skip
    return result


def calibrate(
    run: Path = typer.Argument(..., help="Run directory written by `digitlab train`."),  # noqa: B008
) -> None:
    """Fit the temperature and the 'not a digit' threshold on the validation split, then re-evaluate."""
    from rich.table import Table

    from digitlab.evaluation.calibrate import calibrate_run

    with console.status("calibrating…") as status:
        result = calibrate_run(run, progress=lambda msg: status.update(f"{msg}…"))
    cal, before, after, ood = result["calibration"], result["test_before"], result["test_after"], result["ood"]
    table = Table(title=f"calibration of {run}")
    for col in ("", "before", "after"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("temperature", "1", f"{cal['temperature']:.4g}")
    table.add_row("validation NLL", f"{cal['nll_before']:.4f}", f"{cal['nll_after']:.4f}")
    table.add_row("validation ECE", f"{cal['ece_before']:.2%}", f"{cal['ece_after']:.2%}")
    if before and before.get("temperature") != after["temperature"]:
        label = f" (T={before.get('temperature', 1):.3g})"
        table.add_row("test NLL" + label, f"{before['nll']:.4f}", f"{after['nll']:.4f}")
        table.add_row("test ECE" + label, f"{before['ece']:.2%}", f"{after['ece']:.2%}")
    else:
        table.add_row("test NLL", "", f"{after['nll']:.4f}")
        table.add_row("test ECE", "", f"{after['ece']:.2%}")
    console.print(table)
    console.print(f"fitted on the {cal['fitted_on']}", highlight=False, soft_wrap=True)
    rule = cal["ood"]
    console.print(
        f"not a digit: {rule['score']} < {rule['threshold']:.4g} or bright-ink share > {rule['ink_max']:.3f}; "
        f"keeps {rule['tpr_in']:.2%} of validation digits; rejects "
        + ", ".join(f"{k} {v:.1%}" for k, v in rule["rejected"].items()) + " (fitting sets)",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    if ood:
        console.print("test-set AUROC (MNIST test vs): " + ", ".join(f"{k} {v:.4f}" for k, v in ood["auroc"].items())
                      + f"; MNIST test digits rejected {ood['rejected']['mnist_test']:.2%}", highlight=False,
                      soft_wrap=True)  # fmt: skip
    console.print(f"written: {Path(run) / 'calibration.json'}, metrics.json, report.md", highlight=False)
