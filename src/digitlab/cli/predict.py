"""`digitlab predict` and `digitlab read`: images in, digits out (a table, JSON or CSV); folders as batch jobs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from digitlab.cli.base import (
    BACKEND_HELP,
    TTA_HELP,
    UNCALIBRATED_HELP,
    check_format,
    console,
    err_console,
    stdout_errors,
)
from digitlab.core.errors import RunDirError
from digitlab.core.rundir import RunDir, default_run

PREDICT_FORMATS = ("table", "json", "csv")


def _is_run_dir(path: Path) -> bool:
    rd = RunDir(path)
    return path.is_dir() and (rd.checkpoint_dir.is_dir() or rd.model_file("onnx").is_file())


def _run_and_inputs(args: list[str]) -> tuple[Path, list[str]]:
    """`[RUN] INPUT...`: the first argument is the run when it is a run directory; else the bundled model is.

    A first argument that names nothing and is no image or CSV file name (`runs/fsat`) is a mistyped run: it
    is refused, not read as an input while the bundled model answers in the run's place.
    """
    from digitlab.data.datasets import IMAGE_SUFFIXES

    first = Path(args[0])
    if _is_run_dir(first):
        return first, args[1:]
    if first.is_dir():  # never an image: say what is wrong with it as a run
        raise RunDirError(f"{args[0]}: not a run directory (no checkpoint/ or model.onnx in it)")
    if not first.exists() and (first.suffix.lower() not in {*IMAGE_SUFFIXES, ".csv"} or args[0].endswith("/")):
        raise RunDirError(f"no run directory {args[0]} (and no such file); give an existing run directory, "
                          "or leave it out to use the bundled model")  # fmt: skip
    return default_run(), args


def predict(
    args: list[str] = typer.Argument(
        ..., metavar="[RUN] INPUT...", help="Run directory, then image files or folders (or a Kaggle test.csv)."
    ),
    fmt: str = typer.Option("table", "--format", help="table, json (one list) or csv."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    out: Path | None = typer.Option(
        None, "--out", help="Batch mode: one row per file into this .csv, .jsonl or .parquet, flushed per batch."
    ),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include the images in subfolders of folders."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue --out: skip the files already in it (matched by their path relative to "
        "the folder holding every INPUT, however that folder is spelled).",
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Images per model batch and per flush."),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="Decoding workers (default: one per CPU; 0: decode in the main thread)."
    ),
    kaggle: Path | None = typer.Option(
        None, "--kaggle-submission", help="Read INPUT as Kaggle's test.csv; write the ImageId,Label file here."
    ),
    tta: bool = typer.Option(False, "--tta/--no-tta", help=TTA_HELP),
    uncalibrated: bool = typer.Option(False, "--allow-uncalibrated", help=UNCALIBRATED_HELP),
) -> None:
    """Predict the digit in each image: calibrated confidence, or 'empty', 'not a digit', or an error.

    Every file gets an answer; exit code 1 when any of them could not be read.

    Folders, --out or --kaggle-submission: a streaming batch job with a progress bar (see digitlab.inference.batch).
    """
    from digitlab.inference.predict import Predictor

    check_format(fmt, PREDICT_FORMATS)
    run, files = _run_and_inputs(args)
    if not files:
        raise typer.BadParameter("give at least one image FILE after the run directory", param_hint="FILE...")
    if out is not None or kaggle is not None or resume or any(Path(f).is_dir() for f in files):
        if fmt != "table":
            raise typer.BadParameter("not with --out (its suffix sets the format) or folders", param_hint="--format")
        _predict_batch(run, files, backend, out, recursive, resume, batch_size, workers, kaggle, tta, uncalibrated)
        return
    predictor = Predictor.from_run(run, backend=backend, tta=tta, allow_uncalibrated=uncalibrated)
    results = predictor.predict(files)
    rows = [{"file": f, **r.to_dict()} for f, r in zip(files, results, strict=True)]
    with stdout_errors():
        if fmt == "table":
            _print_table(predictor, backend, rows)
        else:  # json: exact (escaped) names; csv and the table: names as `batch_output.shown` shows them
            sys.stdout.write(json.dumps(rows) + "\n" if fmt == "json" else _csv_rows(rows))
    errors = sum(r.status == "error" for r in results)
    if errors:
        err_console.print(f"[bold red]error:[/] {errors} of {len(results)} file(s) could not be read",
                          highlight=False)  # fmt: skip
        raise typer.Exit(1)


def _csv_rows(rows: list[dict[str, Any]]) -> str:
    """`predict --format csv`: a header and one line per file."""
    import csv
    import io

    from digitlab.inference.batch_output import shown

    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "digit", "confidence", "status", "message", *(f"p{d}" for d in range(10))])
    for row in rows:
        probs = [f"{p:.6g}" for p in row["probabilities"]] or [""] * 10
        digit = "" if row["digit"] is None else row["digit"]
        writer.writerow([shown(row["file"]), digit, f"{row['confidence']:.6g}", row["status"],
                         shown(row["message"] or ""), *probs])  # fmt: skip
    return buf.getvalue()


def _print_table(predictor: Any, backend: str, rows: list[dict[str, Any]]) -> None:
    """`predict --format table` (the default): a Rich table, names shown as text, never read as markup."""
    from rich.markup import escape
    from rich.table import Table

    from digitlab.inference.batch_output import shown

    info = predictor.info
    table = Table(caption=f"run {info['run']} ({info['preset']}), {backend}, temperature "
                  f"{info['temperature']:.3g}", caption_justify="left")  # fmt: skip
    for col, justify in (("file", "left"), ("digit", "right"), ("confidence", "right"), ("status", "left"),
                         ("note", "left")):  # fmt: skip
        table.add_column(col, justify=justify, overflow="fold")
    style = {"ok": "green", "empty": "yellow", "not_a_digit": "yellow", "error": "red"}
    for row in rows:
        note = row["message"] or ""
        if row["status"] == "ok":
            ranked = sorted(range(10), key=lambda d: -row["probabilities"][d])[1:3]
            note = "then " + ", ".join(f"{d} ({row['probabilities'][d]:.1%})" for d in ranked)
        table.add_row(escape(shown(row["file"])), "—" if row["digit"] is None else str(row["digit"]),
                      f"{row['confidence']:.1%}" if row["digit"] is not None else "—",
                      f"[{style[row['status']]}]{row['status']}[/]", escape(shown(note)))  # fmt: skip
    console.print(table)


def _predict_batch(run: Path, inputs: list[str], backend: str, out: Path | None, recursive: bool, resume: bool,
                   batch_size: int, workers: int | None, kaggle: Path | None, tta: bool,
                   uncalibrated: bool = False) -> None:  # fmt: skip
    """`predict` over folders / into --out / into a Kaggle submission, with a Rich progress bar (images/s)."""
    from rich import progress as rp
    from rich.text import Text

    from digitlab.inference.batch import kaggle_submission, predict_files
    from digitlab.inference.batch_output import check_out
    from digitlab.inference.predict import Predictor

    class Rate(rp.ProgressColumn):
        def render(self, task: rp.Task) -> Text:
            return Text(f"{task.speed:,.0f} images/s" if task.speed else "… images/s")

    if kaggle is not None and (out is not None or resume or len(inputs) != 1 or Path(inputs[0]).is_dir()):
        raise typer.BadParameter("takes one Kaggle CSV INPUT and no --out/--resume", param_hint="--kaggle-submission")
    if out is None and kaggle is None:
        raise typer.BadParameter("folders and --resume need --out (a .csv, .jsonl or .parquet)", param_hint="--out")
    if out is not None:
        check_out(out, resume)  # before loading the model: a wrong suffix or a missing pyarrow fails at once
    predictor = Predictor.from_run(
        run, backend=backend, threads=1 if workers != 0 else None, tta=tta, allow_uncalibrated=uncalibrated
    )
    progress = rp.Progress(rp.TextColumn("[bold]predicting"), rp.BarColumn(), rp.MofNCompleteColumn(), Rate(),
                           rp.TimeElapsedColumn(), rp.TextColumn("ETA"), rp.TimeRemainingColumn(),
                           console=err_console, transient=True)  # fmt: skip
    task = progress.add_task("predict", total=None)
    update = lambda done, total: progress.update(task, completed=done, total=total)  # noqa: E731
    try:
        with progress:
            if kaggle is not None:
                n = kaggle_submission(predictor, inputs[0], kaggle, progress=update)
                with stdout_errors():
                    console.print(f"[bold green]ok[/] {n:,} rows → {kaggle} (ImageId,Label)", highlight=False)
                return
            s = predict_files(predictor, inputs, out, recursive=recursive, resume=resume, batch_size=batch_size,
                              workers=workers, progress=update)  # fmt: skip
    except KeyboardInterrupt:
        how = "nothing written" if kaggle else f"finished batches are in {out}; continue with --resume"
        err_console.print(f"interrupted: {how}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(s.counts.items())) or "nothing new"
    skipped = f"; {s.skipped:,} already there" if s.skipped else ""
    rate = f", {s.images_per_second:,.0f} images/s" if s.written else ""
    with stdout_errors():
        console.print(f"[bold green]done[/] {s.written:,} rows → {s.out} ({counts}{skipped}) in {s.seconds:.1f} s"
                      f"{rate}", highlight=False, soft_wrap=True)  # fmt: skip
    if s.counts.get("error"):
        err_console.print(f"[bold red]error:[/] {s.counts['error']:,} of {s.written:,} file(s) could not be read "
                          f"(status 'error' rows in {s.out})", highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1)


def read(
    args: list[str] = typer.Argument(..., metavar="[RUN] IMAGE", help="Run directory, then one image."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    tta: bool = typer.Option(False, "--tta/--no-tta", help=TTA_HELP),
    uncalibrated: bool = typer.Option(False, "--allow-uncalibrated", help=UNCALIBRATED_HELP),
) -> None:
    """Read a number written on one line: the digits left to right, each with its confidence and box."""
    from digitlab.inference.predict import Predictor

    check_format(fmt, ("table", "json"))
    run, images = _run_and_inputs(args)
    if len(images) != 1:
        raise typer.BadParameter(f"give exactly one IMAGE, not {len(images)}", param_hint="IMAGE")
    result = Predictor.from_run(run, backend=backend, tta=tta, allow_uncalibrated=uncalibrated).read(images[0])
    with stdout_errors():
        _print_read(result, images[0], fmt)
    if result.status == "error":
        err_console.print(f"[bold red]error:[/] {result.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _print_read(result: Any, image: str, fmt: str) -> None:
    import json

    from rich.table import Table

    if fmt == "json":
        sys.stdout.write(json.dumps({"file": image, **result.to_dict()}) + "\n")
    else:
        colour = {"ok": "green", "empty": "yellow", "error": "red"}[result.status]
        console.print(f"[bold {colour}]{result.text or '—'}[/]  ({result.message or result.status})",
                      highlight=False)  # fmt: skip
        if result.digits:
            table = Table()
            for col in ("#", "digit", "confidence", "box (x0, y0, x1, y1)", "status"):
                table.add_column(col, justify="left" if col.startswith(("box", "status")) else "right")
            for k, d in enumerate(result.digits, 1):
                table.add_row(str(k), d.char if d.status != "empty" else "—",
                              f"{d.confidence:.1%}" if d.digit is not None else "—",
                              ", ".join(map(str, d.box)), d.status)  # fmt: skip
            console.print(table)
