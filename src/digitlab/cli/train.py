"""`digitlab train` and `digitlab ensemble`: a run made from a preset (or from runs), with Rich progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from digitlab.cli.base import console, err_console
from digitlab.core.errors import ConfigError
from digitlab.core.formatting import pct

if TYPE_CHECKING:
    from digitlab.core.config import TrainConfig


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
    variant: str = typer.Option(
        "auto", help="auto: the preset's fp32 variant where training runs in fp32 (no native bf16); fp32; none."
    ),
) -> None:
    """Train a model into a run directory, then evaluate it on the official test set and export model.onnx."""
    from digitlab.core.config import get_preset
    from digitlab.training.distributed import current_rank

    if resume is not None:
        _refuse_changes_on_resume(resume, {
            "--preset": preset if preset != "seed" else None, "--out": out, "--data": data, "--epochs": epochs,
            "--batch-size": batch_size, "--lr": lr, "--seed": seed, "--split-seed": split_seed,
            "--val-fraction": val_fraction, "--limit": limit, "--test-limit": test_limit, "--device": device,
            "--threads": threads, "--padding": padding, "--sync-bn": sync_bn, "--set": set_ or None,
            "--variant": None if variant == "auto" else variant})  # fmt: skip
        config, out = None, resume
    else:
        config = get_preset(preset, _variant(preset, variant, device))
        model_args = dict(config.model_args, padding=padding) if padding else None
        config = config.override(
            data=data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_fraction=val_fraction,
            limit=limit, test_limit=test_limit, device=device, threads=threads, model_args=model_args,
            sync_bn=sync_bn, split_seed=split_seed,
        ).set(**parse_sets(set_ or []))  # fmt: skip
        out = out or Path("runs") / f"{config.preset}-{config.seed}"
        if current_rank() == 0:
            console.print(f"[bold]training[/] preset={config.preset} model={config.model} seed={config.seed} → {out}")
    metrics = _train_with_progress(config, out, resume is not None, test)
    if current_rank() == 0:
        _print_summary(metrics, out)


def _variant(preset: str, choice: str, device: str | None) -> str:
    """--variant as get_preset's argument: auto picks the fp32 variant where this machine trains in fp32."""
    from digitlab.core.config import get_preset, variant_for
    from digitlab.core.hardware import cpu_info
    from digitlab.model.forward import pick_device
    from digitlab.training.optim import trains_in_fp32

    if choice not in ("auto", "fp32", "none"):
        raise typer.BadParameter(f"{choice!r}: choose auto, fp32 or none", param_hint="--variant")
    if choice != "auto":
        return "" if choice == "none" else choice
    config = get_preset(preset)
    return variant_for(preset, trains_in_fp32(config.precision, pick_device(device or config.device), cpu_info()))


def _refuse_changes_on_resume(resume: Path, options: dict[str, Any]) -> None:
    """A resumed run continues with its saved config: an option that would change it is refused, not ignored."""
    ignored = [name for name, value in options.items() if value is not None]
    if ignored:
        raise typer.BadParameter(f"{', '.join(ignored)} cannot change a resumed run: it continues with "
                                 f"{resume / 'config.json'}", param_hint="--resume")  # fmt: skip


def _train_with_progress(config: TrainConfig | None, out: Path, resume: bool, test: bool) -> dict[str, Any]:
    """The run pipeline under a Rich progress bar; a stop (Ctrl-C, SIGTERM) says how to continue, exit 130."""
    from digitlab.evaluation.pipeline import train as run_training
    from digitlab.training.distributed import current_rank
    from digitlab.training.stopping import Interrupted

    reporter = RichReporter()
    try:
        return run_training(config, out, resume=resume, reporter=reporter, evaluate_test=test).metrics
    except Interrupted as e:
        reporter.close()
        if current_rank() == 0:
            left = "; training is complete, calibration/evaluation/export are not" if e.finishing else ""
            # soft_wrap: Rich would otherwise break the line at 80 columns when stderr is no terminal (torchrun,
            # logs), splitting the command the user is meant to copy
            err_console.print(f"interrupted: checkpoint saved{left}; continue with `digitlab train --resume {out}`",
                              highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(130) from None
    finally:
        reporter.close()


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
