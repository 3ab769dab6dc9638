"""Command-line interface (Typer): maps options onto the library; errors become one red line and exit 1."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from digitlab.cli.feedback import DEMO_FEEDBACK_DB_HELP, FEEDBACK_DB_HELP, feedback_app, serve_feedback_db
from digitlab.core.errors import ConfigError, DigitlabError
from digitlab.core.rundir import default_run

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, evaluate and serve digit recognizers.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect, verify, download and export datasets.")
runs_app = typer.Typer(no_args_is_help=True, help="List and compare run directories.")
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.add_typer(feedback_app, name="feedback")

console = Console()
err_console = Console(stderr=True)


def main() -> None:
    """Console-script entry point: user errors print one line, never a traceback (and warnings of ours one line)."""
    import warnings

    from digitlab.core.errors import DigitlabWarning

    show = warnings.showwarning

    def one_line(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DigitlabWarning):
            err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
        else:
            show(message, category, *args, **kwargs)

    warnings.showwarning = one_line
    try:
        app()
    except DigitlabError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)


# ---------------------------------------------------------------------------------------------- train / evaluate


class RichReporter:
    """Training progress: one Rich bar per epoch (loss, accuracy, lr) and a summary line when it ends."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.4f}  lr {task.fields[lr]:.2e}"),
            TimeElapsedColumn(), console=console, transient=True,
        )  # fmt: skip
        self.task = None

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, completed=done, epoch=f"{epoch}/{epochs}",
                                           loss=0.0, acc=0.0, lr=0.0)  # fmt: skip
        self._loss, self._acc, self._n = 0.0, 0.0, 0

    def step(self, loss: float, accuracy: float, lr: float) -> None:
        self._n += 1
        self._loss += (loss - self._loss) / self._n  # running means over the epoch so far
        self._acc += (accuracy - self._acc) / self._n
        self.progress.update(self.task, advance=1, loss=self._loss, acc=self._acc, lr=lr)

    def close(self) -> None:
        """Stop the live display (also on interrupt: while it runs, Rich redirects stderr to stdout)."""
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        self.progress.stop()

    def note(self, text: str) -> None:
        console.print(text, highlight=False)

    def end_epoch(self, row: dict) -> None:
        self.close()
        val = ""
        if row.get("val_accuracy") is not None:
            val = f"  val loss {row['val_loss']:.4f}  val acc {row['val_accuracy']:.4%}"
        console.print(
            f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  acc {row['train_accuracy']:.4%}{val}"
            f"  lr {row['lr']:.2e}  [{row['seconds']:.0f} s]",
            highlight=False,
        )


@app.command()
def train(
    preset: str = typer.Option("seed", help="Named preset: seed (the reference), fast, accurate or robust (bundled)."),
    out: Path = typer.Option(None, "--out", help="Run directory to create (default runs/<preset>-<seed>)."),
    resume: Path = typer.Option(None, "--resume", help="Continue the interrupted run in this directory."),
    data: str = typer.Option(None, help="Dataset name (mnist, fashion-mnist) or path (IDX dir, CSV, folder)."),
    epochs: int = typer.Option(None, help="Maximum number of epochs."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size."),
    lr: float = typer.Option(None, help="(Peak) learning rate."),
    seed: int = typer.Option(None, help="Random seed (split, init, shuffling, augmentation)."),
    split_seed: int = typer.Option(None, "--split-seed", help="Seed of the validation split only (default: --seed)."),
    val_fraction: float = typer.Option(None, "--val-fraction", help="Share of training data held out."),
    limit: int = typer.Option(None, help="Train on a stratified subset of this many images (dry runs)."),
    test_limit: int = typer.Option(None, "--test-limit", help="Evaluate on the first N test images only."),
    device: str = typer.Option(None, help="auto, cpu, cuda or mps."),
    threads: int = typer.Option(None, help="CPU threads for torch."),
    padding: str = typer.Option(None, help="seed model only: 'valid' (Keras default) or 'same'."),
    sync_bn: bool = typer.Option(None, "--sync-bn/--no-sync-bn", help="torchrun: synchronise BatchNorm across ranks."),
    set_: list[str] = typer.Option(  # noqa: B008
        None, "--set", help="Any config field, e.g. --set elastic=0 --set ema=null (JSON values; repeatable)."
    ),
    test: bool = typer.Option(True, "--test/--no-test", help="Evaluate on the test set (off for ablations)."),
) -> None:
    """Train a model into a run directory, then evaluate it on the official test set."""
    from digitlab.core.config import get_preset
    from digitlab.evaluation.pipeline import train as run_training
    from digitlab.training.distributed import current_rank
    from digitlab.training.stopping import Interrupted

    if resume is not None:
        options = {"--preset": preset if preset != "seed" else None, "--out": out, "--data": data, "--epochs": epochs,
                   "--batch-size": batch_size, "--lr": lr, "--seed": seed, "--split-seed": split_seed,
                   "--val-fraction": val_fraction, "--limit": limit, "--test-limit": test_limit, "--device": device,
                   "--threads": threads, "--padding": padding, "--sync-bn": sync_bn, "--set": set_ or None}  # fmt: skip
        ignored = [name for name, value in options.items() if value is not None]
        if ignored:  # silently training on with the saved config instead would not be what was asked for
            raise typer.BadParameter(f"{', '.join(ignored)} cannot change a resumed run: it continues with "
                                     f"{resume / 'config.json'}", param_hint="--resume")  # fmt: skip
        config, out = None, resume
    else:
        config = get_preset(preset)
        model_args = dict(config.model_args, padding=padding) if padding else None
        config = config.override(
            data=data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_fraction=val_fraction,
            limit=limit, test_limit=test_limit, device=device, threads=threads, model_args=model_args,
            sync_bn=sync_bn, split_seed=split_seed,
        ).set(**parse_sets(set_ or []))  # fmt: skip
        out = out or Path("runs") / f"{config.preset}-{config.seed}"
        if current_rank() == 0:
            console.print(f"[bold]training[/] preset={config.preset} model={config.model} seed={config.seed} → {out}")
    reporter = RichReporter()
    try:
        result = run_training(config, out, resume=resume is not None, reporter=reporter, evaluate_test=test)
    except Interrupted as e:
        reporter.close()
        if current_rank() == 0:
            left = "; training is complete, calibration/evaluation are not" if e.finishing else ""
            # soft_wrap: Rich would otherwise break the line at 80 columns when stderr is no terminal (torchrun,
            # logs), splitting the command the user is meant to copy
            err_console.print(f"interrupted: checkpoint saved{left}; continue with `digitlab train --resume {out}`",
                              highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(130) from None
    finally:
        reporter.close()
    if current_rank() == 0:
        _print_summary(result.metrics, out)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values are JSON (numbers, null, lists), anything else is a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes key=value, not {item!r}")
        key = key.strip().replace("-", "_")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _print_summary(m: dict, out: Path) -> None:
    test = m.get("test", {})
    val = m.get("val", {}).get("accuracy")
    line = f"[bold green]done[/] {m['params']:,} params, {m['train_seconds']:.1f} s training"
    if val is not None:
        line += f", val acc {val:.4%}"
    if test:
        line += f", [bold]test acc {test['accuracy']:.4%}[/]"
    console.print(line)
    console.print(f"run directory: {out} (report: {out / 'report.md'})")


@app.command()
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


# ---------------------------------------------------------------------------------------------- data

DATASET_HELP = "A dataset name (mnist, fashion-mnist) or a path (IDX directory, Kaggle CSV, image folder)."


@data_app.command("info")
def data_info(dataset: str = typer.Argument("mnist", help=DATASET_HELP)) -> None:
    """Show a dataset's source, split sizes, class counts and pixel mean/std (pixels scaled to [0, 1])."""
    from rich.table import Table

    from digitlab.data.datasets import NUM_CLASSES, class_counts, load_dataset, pixel_stats

    ds = load_dataset(dataset)
    splits = {"train": ds.train, "test": ds.test}
    table = Table(title=f"dataset: {ds.name}", caption=f"source: {ds.source}", caption_justify="left")
    table.add_column("", style="bold")
    for name in splits:
        table.add_column(name, justify="right")

    def cells(fn) -> list[str]:
        return [fn(split) if split is not None else "-" for split in splits.values()]

    table.add_row("examples", *cells(lambda s: str(len(s))))
    counts = {n: None if s is None or s.labels is None else class_counts(s.labels) for n, s in splits.items()}
    for c in range(NUM_CLASSES):
        table.add_row(f"class {c}", *[("-" if n is None else str(n[c])) for n in counts.values()])
    stats = {name: None if s is None else pixel_stats(s.images) for name, s in splits.items()}
    table.add_row("pixel mean", *[("-" if st is None else f"{st[0]:.4f}") for st in stats.values()])
    table.add_row("pixel std", *[("-" if st is None else f"{st[1]:.4f}") for st in stats.values()])
    console.print(table)


@data_app.command("verify")
def data_verify(dataset: str = typer.Argument("mnist", help=DATASET_HELP)) -> None:
    """Load a dataset with every check (SHA-256 of IDX files included): print 'ok' or the problem (exit 1)."""
    from digitlab.data.datasets import verify_dataset

    ds, checked = verify_dataset(dataset)
    counts = f"train {len(ds.train)}" + ("" if ds.test is None else f", test {len(ds.test)}")
    how = f"{len(checked)} file checksums match" if checked else "structure checked, no checksums to compare"
    line = f"[bold green]ok[/] {ds.name}: {counts}; {how} ({ds.source})"
    console.print(line, highlight=False, soft_wrap=True)


@data_app.command("download")
def data_download(
    name: str = typer.Argument(..., help="mnist or fashion-mnist."),
    directory: str | None = typer.Option(
        None, "--dir", help="Destination folder (default: $DIGITLAB_DATA/NAME, else data/NAME)."
    ),
    mirror: list[str] | None = typer.Option(  # noqa: B008 (typer's documented style)
        None, "--mirror", help="Mirror base URL to try, in order (repeatable); replaces the built-in list."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    timeout: float = typer.Option(30.0, "--timeout", min=1, help="Network timeout in seconds."),
) -> None:
    """Download a dataset's four IDX files (checksums verified, atomic writes) and write SHA256SUMS."""
    from pathlib import Path

    from digitlab.data.catalog import project_data_dir
    from digitlab.data.download import download_dataset

    dest = Path(directory) if directory else project_data_dir() / name
    dest = download_dataset(name, dest, mirrors=mirror or None, progress=progress, timeout=timeout)
    console.print(f"[bold green]ok[/] {name} in {dest} (checksums verified)", highlight=False, soft_wrap=True)


@data_app.command("export-png")
def data_export_png(
    dataset: str = typer.Argument(..., help=DATASET_HELP),
    out: str = typer.Option(..., "--out", help="New folder to write <label>/<index>.png into."),
    split: str = typer.Option("train", "--split", help="train or test."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Export only the first N images."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Write a split as an image folder OUT/<label>/<index>.png (the format the image-folder loader reads)."""
    from pathlib import Path

    from digitlab.core.errors import DataError
    from digitlab.data.datasets import export_image_folder, load_dataset

    if split not in ("train", "test"):
        raise typer.BadParameter(f"{split!r} is not one of 'train', 'test'", param_hint="--split")
    ds = load_dataset(dataset)
    chosen = ds.train if split == "train" else ds.test
    if chosen is None:
        raise DataError(f"{dataset}: has no test split; use --split train")
    n = export_image_folder(chosen, Path(out), limit=limit, progress=progress)
    console.print(f"[bold green]ok[/] wrote {n} PNGs to {out}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------- runs


def _load_run_summary(run: Path) -> dict:
    """config.json and metrics.json of a run, leniently: a missing or broken file gives empty fields."""
    import json

    out: dict = {}
    for name in ("config.json", "metrics.json"):
        try:
            out[name] = json.loads((run / name).read_text())
        except (OSError, ValueError):
            out[name] = {}
    return out


def _run_figures(run: Path) -> dict[str, str]:
    """The key figures of a run as display strings ('—' where a figure is missing)."""
    s = _load_run_summary(run)
    cfg, m = s["config.json"], s["metrics.json"]
    val, test = m.get("val") or {}, m.get("test") or {}

    def pct(x: object) -> str:
        return f"{x:.2%}" if isinstance(x, (int, float)) else "—"

    def num(x: object, fmt: str = "{:,}") -> str:
        return fmt.format(x) if isinstance(x, (int, float)) else "—"

    ci = test.get("accuracy_ci95")
    return {
        "preset": str(m.get("preset") or cfg.get("preset") or "—"),
        "model": str(m.get("model") or cfg.get("model") or "—"),
        "params": num(m.get("params")),
        "epochs": num(m.get("epochs")),
        "train seconds": num(m.get("train_seconds"), "{:,.1f}"),
        "val accuracy": pct(val.get("accuracy")),
        "test accuracy": pct(test.get("accuracy")),
        "test 95% CI": f"{pct(ci[0])}–{pct(ci[1])}" if ci else "—",
        "test errors": num(test.get("errors")) + (f" / {test['n']:,}" if "n" in test else ""),
        "NLL": num(test.get("nll"), "{:.4f}"),
        "ECE": pct(test.get("ece")),
    }


@runs_app.command("list")
def runs_list(
    root: Path = typer.Argument(Path("runs"), help="Folder to search for run directories."),  # noqa: B008
) -> None:
    """List the run directories under ROOT with their headline figures."""
    from rich.table import Table

    from digitlab.core.errors import RunDirError

    if not root.is_dir():
        raise RunDirError(f"no runs folder at {root} — train one with `digitlab train --out {root}/<name>`")
    runs = sorted(p.parent for p in root.rglob("config.json"))
    if not runs:
        console.print(f"no runs under {root}", highlight=False)
        return
    table = Table(title=f"runs in {root}")
    table.add_column("run", style="bold", overflow="fold")
    cols = ("preset", "params", "val accuracy", "test accuracy", "train seconds")
    for col in cols:
        table.add_column(col, justify="left" if col == "preset" else "right")
    for run in runs:
        fig = _run_figures(run)
        table.add_row(run.relative_to(root).as_posix(), *(fig[c] for c in cols))
    console.print(table)


@runs_app.command("compare")
def runs_compare(runs: list[Path] = typer.Argument(..., help="Run directories to compare.")) -> None:  # noqa: B008
    """Compare runs side by side: one column per run, one row per key figure."""
    from rich.table import Table

    from digitlab.core.errors import RunDirError

    for run in runs:
        if not (run / "config.json").is_file():
            raise RunDirError(f"{run}: not a run directory (no config.json)")
    table = Table(title="run comparison")
    table.add_column("", style="bold")
    for run in runs:
        table.add_column(run.name or str(run), justify="right", overflow="fold")
    figures = [_run_figures(run) for run in runs]
    for key in figures[0]:
        table.add_row(key, *(f[key] for f in figures))
    console.print(table)


# ---------------------------------------------------------------------------------------------- predict / export

PREDICT_FORMATS = ("table", "json", "csv")
BACKEND_HELP = "torch, onnx or onnx-int8 (the ONNX files come from `digitlab export`)."
# Serving runs without test-time augmentation unless asked: it buys the bundled model nothing measurable.
TTA_HELP = ("Test-time augmentation: the mean over the image and four 1-pixel shifts, 5x the model's time. Off by "
            "default: the bundled fast model scores 99.63% on MNIST test with it and without it.")  # fmt: skip
UNCALIBRATED_HELP = ("Use a run that has no calibration.json (raw softmax confidences, no 'not a digit' check) "
                     "instead of refusing it.")  # fmt: skip


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "checkpoint").is_dir() or (path / "model.onnx").is_file())


def _run_and_inputs(args: list[str]) -> tuple[Path, list[str]]:
    """`[RUN] INPUT...`: the first argument is the run when it is a run directory; else the bundled model is.

    A first argument that names nothing and is no image or CSV file name (`runs/fsat`) is a mistyped run: it
    is refused, not read as an input while the bundled model answers in the run's place.
    """
    from digitlab.core.errors import RunDirError
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


def _check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(allowed)}", param_hint="--format")


def _pct_or_dash(x: float | None) -> str:
    return "—" if x is None else f"{x:.2%}"


@contextlib.contextmanager
def _stdout_errors() -> Iterator[None]:
    """Write to stdout inside this: a full disk (`> /dev/full`) or a closed pipe (`| head`) becomes a one-line
    error and exit 1, not a traceback (and not a second one when Python flushes stdout at exit)."""
    try:
        yield
        sys.stdout.flush()
    except OSError as e:  # ENOSPC, EFBIG, EPIPE (BrokenPipeError)...
        with contextlib.suppress(OSError, ValueError, AttributeError):  # stdout without a file descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        raise DigitlabError(f"cannot write the output to stdout: {e.strerror or e}") from None


@app.command()
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

    _check_format(fmt, PREDICT_FORMATS)
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
    with _stdout_errors():
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
                with _stdout_errors():
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
    with _stdout_errors():
        console.print(f"[bold green]done[/] {s.written:,} rows → {s.out} ({counts}{skipped}) in {s.seconds:.1f} s"
                      f"{rate}", highlight=False, soft_wrap=True)  # fmt: skip
    if s.counts.get("error"):
        err_console.print(f"[bold red]error:[/] {s.counts['error']:,} of {s.written:,} file(s) could not be read "
                          f"(status 'error' rows in {s.out})", highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1)


@app.command()
def read(
    args: list[str] = typer.Argument(..., metavar="[RUN] IMAGE", help="Run directory, then one image."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP),
    tta: bool = typer.Option(False, "--tta/--no-tta", help=TTA_HELP),
    uncalibrated: bool = typer.Option(False, "--allow-uncalibrated", help=UNCALIBRATED_HELP),
) -> None:
    """Read a number written on one line: the digits left to right, each with its confidence and box."""
    from digitlab.inference.predict import Predictor

    _check_format(fmt, ("table", "json"))
    run, images = _run_and_inputs(args)
    if len(images) != 1:
        raise typer.BadParameter(f"give exactly one IMAGE, not {len(images)}", param_hint="IMAGE")
    result = Predictor.from_run(run, backend=backend, tta=tta, allow_uncalibrated=uncalibrated).read(images[0])
    with _stdout_errors():
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


@app.command()
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


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="Run directory written by `digitlab train`."),  # noqa: B008
    fmt: str = typer.Option("onnx", "--format", help="onnx (the only format for now)."),
    int8: bool = typer.Option(False, "--int8", help="Also write model.int8.onnx (static int8 quantisation)."),
) -> None:
    """Export a run for the edge: RUN/model.onnx (fp32, dynamic batch), checked against PyTorch."""
    from digitlab.inference.export import export_onnx

    _check_format(fmt, ("onnx",))
    with console.status("exporting…") as status:
        entry = export_onnx(run, int8=int8, progress=lambda msg: status.update(f"{msg}…"))
    console.print(f"[bold green]ok[/] {Path(run) / 'model.onnx'}: {entry['onnx_bytes']:,} bytes; max |Δp| vs "
                  f"PyTorch {entry['onnx_max_abs_diff']:.2e} on {entry['parity_n']} test images", highlight=False,
                  soft_wrap=True)  # fmt: skip
    if int8:
        delta = 100 * (entry["int8_test_accuracy"] - entry["torch_test_accuracy"])
        console.print(f"[bold green]ok[/] {Path(run) / 'model.int8.onnx'}: {entry['onnx_int8_bytes']:,} bytes; test "
                      f"accuracy {entry['int8_test_accuracy']:.2%} vs PyTorch {entry['torch_test_accuracy']:.2%} "
                      f"({delta:+.2f} pp, {entry['test_n']:,} images)", highlight=False, soft_wrap=True)  # fmt: skip


# ---------------------------------------------------------------------------------------------- app


@app.command("app")
def app_command(
    run: Path = typer.Argument(None, metavar="RUN", help="Run directory (default: the bundled model)."),  # noqa: B008
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port to serve on."),
    address: str = typer.Option("localhost", "--address", help="Address to listen on (0.0.0.0: other devices too)."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help=TTA_HELP),
    feedback_db: str | None = typer.Option(
        None, "--feedback-db", envvar="DIGITLAB_FEEDBACK_DB", help=DEMO_FEEDBACK_DB_HELP
    ),
    no_feedback: bool = typer.Option(False, "--no-feedback", help="Run the demo without its feedback buttons."),
) -> None:
    """Start the web app: draw or upload a digit, see the answer, its probabilities and why (Streamlit)."""
    import os
    import socket

    from digitlab.core.errors import DigitlabError
    from digitlab.core.rundir import RunDir
    from digitlab.model.forward import load_model

    run = default_run() if run is None else run
    try:  # a missing, incomplete or corrupt run fails here, in one line (torch's load errors span several)
        load_model(RunDir(run).require())
    except DigitlabError as e:
        text = " ".join(str(e).split())
        raise type(e)(text if len(text) <= 300 else text[:299] + "…") from None
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: ignore closed connections
        try:
            s.bind((address, port))
        except OSError as e:
            reason = e.strerror or e
            raise DigitlabError(f"cannot listen on {address}:{port} ({reason}) — pick another --port") from None
    store = serve_feedback_db(feedback_db, no_feedback, without="the feedback buttons")
    script = Path(__file__).parents[1] / "serving" / "demo.py"
    args = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port), "--server.address",
            address, "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType",
            "none", "--server.runOnSave", "false", "--client.showErrorDetails", "none", "--client.toolbarMode",
            "minimal", "--global.developmentMode", "false"]  # fmt: skip
    console.print(f"[bold]digitlab app[/] {run} → http://{address}:{port}  (Ctrl+C to stop)", highlight=False)
    sys.stdout.flush()
    # the variables app.RUN_ENV, app.TTA_ENV and app_feedback.STORE_ENV name
    env = {k: v for k, v in os.environ.items() if k != "DIGITLAB_APP_FEEDBACK_DB"}
    env.update(DIGITLAB_APP_RUN=str(run.resolve()), DIGITLAB_APP_TTA="1" if tta else "0")
    if store is not None or no_feedback:  # else the page tries the default store and says in one line it cannot
        env["DIGITLAB_APP_FEEDBACK_DB"] = store or ""
    os.execve(sys.executable, args, env)


# ---------------------------------------------------------------------------------------------- serve


def parse_cpus(text: str) -> set[int]:
    """CPU numbers from a list such as "1" or "0,2-3" (the format of taskset -c and cpuset)."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"--cpus {text!r}: expected CPU numbers such as 1 or 0,2-3") from None
    if not cpus:
        raise ConfigError(f"--cpus {text!r}: no CPU given")
    return cpus


def pin_to_cpus(text: str) -> None:
    """Restrict this process (and the workers it starts) to the CPUs in `text`.

    One worker's event loop and its inference thread then wake each other on one core instead of across two,
    and caches stay warm: on the 2-core test machine a single client's p50 drops by 0.4-0.7 ms (README).
    """
    import os

    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("--cpus needs Linux (sched_setaffinity)")
    cpus = parse_cpus(text)
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        missing = ",".join(map(str, sorted(cpus - allowed)))
        raise ConfigError(f"--cpus {text}: CPU {missing} is not available here (have {len(allowed)} CPUs)")
    os.sched_setaffinity(0, cpus)


@app.command()
def serve(
    run: Path | None = typer.Argument(None, help="Run directory to serve (default: the bundled model)."),  # noqa: B008
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: all)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes, each loading the model once."),
    backend: str | None = typer.Option(
        None, "--backend", help="onnx, onnx-int8 or torch (default: onnx when RUN has model.onnx, else torch)."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="DIGITLAB_API_KEY", help="Require this key (X-API-Key or Bearer) on /v1 and /metrics."
    ),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve without an API key on purpose."),
    public_metrics: bool = typer.Option(False, "--public-metrics", help="/metrics answers without the API key."),
    cors_origin: list[str] | None = typer.Option(  # noqa: B008
        None, "--cors-origin", help="Allow this browser origin (repeatable; '*' for any)."
    ),
    max_body_mb: float = typer.Option(10.0, "--max-body-mb", min=0.001, help="Largest request body, in MiB."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, max=1024, help="Most files per /v1/predict/batch."),
    pixel_limit: int | None = typer.Option(None, "--pixel-limit", min=1, help="Most pixels per image."),
    request_pixel_limit: int | None = typer.Option(
        None, "--request-pixel-limit", min=1, help="Most pixels the images of one request hold together."
    ),
    threads: int = typer.Option(1, "--threads", min=1, help="Intra-op threads per model call."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Predictions at once per worker."),
    tta: bool | None = typer.Option(
        None, "--tta/--no-tta", help=f"{TTA_HELP} $DIGITLAB_TTA (on, off, or 'run': the run's config) can set it."
    ),
    graceful_timeout: float = typer.Option(
        30.0, "--graceful-timeout", min=0, help="Seconds to finish in-flight requests after SIGTERM."
    ),
    wait_for_model: bool = typer.Option(
        False, "--wait-for-model", help="Serve before the model loads (/readyz 503, retrying) instead of failing."
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    cpus: str | None = typer.Option(
        None, "--cpus", help="Run the server on these CPU cores only, e.g. 1 or 0,2-3 (Linux; workers share them)."
    ),
    feedback_db: str | None = typer.Option(None, "--feedback-db", envvar="DIGITLAB_FEEDBACK_DB", help=FEEDBACK_DB_HELP),
    no_feedback: bool = typer.Option(False, "--no-feedback", help="Serve without the /v1/feedback routes."),
) -> None:
    """Serve RUN as a REST API (FastAPI + uvicorn): /v1/predict, /v1/predict/batch, /v1/read, /v1/model, /docs.

    Logs are JSON lines on stderr. A model that cannot load stops the server at once (exit 1) unless
    --wait-for-model. SIGTERM stops accepting, finishes the requests already sent and exits 0.
    """
    import os
    import signal
    import socket
    import tempfile

    from pydantic import ValidationError

    from digitlab.core.errors import ConfigError
    from digitlab.serving.observability import log_config
    from digitlab.serving.security import check_api_key
    from digitlab.serving.server import serve as run_server
    from digitlab.serving.server import server_config
    from digitlab.serving.settings import API_KEY_ENV, SETTINGS_ENV, TTA_ENV, ApiSettings, tta_setting

    _check_format(log_level, ("debug", "info", "warning", "error"))
    if tta is None:
        tta = tta_setting(os.environ.get(TTA_ENV) or "off")
    if no_auth and (api_key or os.environ.get(API_KEY_ENV)):
        raise ConfigError(f"--no-auth with an API key set (--api-key or ${API_KEY_ENV}): drop one of them")
    if api_key is None and API_KEY_ENV in os.environ and not no_auth:
        check_api_key(os.environ[API_KEY_ENV], f"${API_KEY_ENV}")  # set but empty: refused (Typer reads it as unset)
    fields = {"run": (default_run() if run is None else run).resolve(), "backend": backend, "api_key": api_key,
              "no_auth": no_auth, "public_metrics": public_metrics, "wait_for_model": wait_for_model,
              "cors_origins": tuple(cors_origin or ()), "max_body_bytes": max(1, round(max_body_mb * 1024 * 1024)),
              "max_batch": max_batch, "threads": threads, "concurrency": concurrency, "tta": tta}  # fmt: skip
    if pixel_limit is not None:
        fields["pixel_limit"] = pixel_limit
    if request_pixel_limit is not None:
        fields["request_pixel_limit"] = request_pixel_limit
    try:
        settings = ApiSettings(**fields)
    except ValidationError as e:
        raise ConfigError("; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())) from None
    if not wait_for_model:
        settings.check()  # a missing run or model file fails here, in one line, not in every worker
    settings = settings.model_copy(update={"feedback_db": serve_feedback_db(feedback_db, no_feedback)})
    if cpus is not None:
        pin_to_cpus(cpus)
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise DigitlabError(f"cannot listen on {host}:{port} ({e.strerror or e}) — pick another --port") from None
    os.environ[SETTINGS_ENV] = settings.to_env()  # each worker's app_from_env() reads it
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # /metrics sums over the workers
        metrics_dir = tempfile.TemporaryDirectory(prefix="digitlab-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name
    # uvicorn re-raises SIGTERM once its graceful shutdown is done; a requested stop exits 0, not by the signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    shown = {True: "on", False: "off", None: "as the run"}[settings.tta]
    console.print(f"[bold]digitlab serve[/] {settings.run} ({settings.resolved_backend}, TTA {shown}, "
                  f"{workers} worker(s)) → http://{host}:{port}  (docs: /docs)", highlight=False,
                  soft_wrap=True)  # fmt: skip
    sys.stdout.flush()
    config = server_config("digitlab.serving.api:app_from_env", factory=True, host=host, port=port, workers=workers,
                           log_config=log_config(log_level), log_level=log_level, access_log=False,
                           server_header=False, timeout_graceful_shutdown=graceful_timeout)  # fmt: skip
    try:
        status = run_server(config)
    finally:
        if metrics_dir is not None:
            metrics_dir.cleanup()
    if status != 0:
        raise DigitlabError("the server did not start (the reason is in the log line above)")


# ---------------------------------------------------------------------------------------------- ensemble


@app.command()
def ensemble(
    runs: list[Path] | None = typer.Argument(  # noqa: B008
        None, metavar="RUN", help="Run directories to average (2 or more, sharing data and validation split)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Run directory to create for the ensemble."),  # noqa: B008
    tta: bool | None = typer.Option(
        None, "--tta/--no-tta", help="Test-time augmentation (default: on when any member used it)."
    ),
    select: int | None = typer.Option(
        None,
        "--select",
        metavar="K",
        min=2,
        help="Choose up to K of the runs on the validation split (greedy "
        "forward selection on log-loss) instead of taking them all.",
    ),
) -> None:
    """Average several runs into one new run directory, calibrated on their shared validation split, then evaluated.

    The result is a run like any other: predict, read, serve, app, calibrate and export (one ONNX graph) take it.
    """
    from rich.table import Table

    from digitlab.core.errors import ConfigError
    from digitlab.evaluation.pipeline import make_ensemble
    from digitlab.training.ensemble import select_members

    runs = list(runs or [])
    if len(runs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs, got {len(runs)}: digitlab ensemble RUN RUN … --out DIR")
    if out is None:
        raise ConfigError("--out DIR is required: the run directory to create for the ensemble")
    with console.status("building the ensemble…") as status:

        def say(msg: str) -> None:
            status.update(f"{msg}…")

        selection = None
        if select is not None:
            runs, selection = select_members(runs, select, tta=tta, progress=say)
        m = make_ensemble(runs, out, tta=tta, progress=say, selection=selection)

    def pct(x: object) -> str:
        return f"{x:.2%}" if isinstance(x, (int, float)) else "—"

    table = Table(title=f"ensemble of {len(runs)} runs → {out}")
    for col in ("run", "params", "val accuracy", "test accuracy"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in m["members"]:
        params = f"{r['params']:,}" if isinstance(r.get("params"), int) else "—"
        table.add_row(Path(r["run"]).name, params, pct(r.get("val_accuracy")), pct(r.get("test_accuracy")))
    table.add_row("[bold]ensemble[/]", f"{m['params']:,}", pct(m["val"]["accuracy"]),
                  f"[bold]{pct((m.get('test') or {}).get('accuracy'))}[/]")  # fmt: skip
    console.print(table)
    console.print(f"run directory: {out} (report: {out / 'report.md'})", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
