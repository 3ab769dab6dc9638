"""A run's report.md: the header, the test-set section and the sections other evaluations stored in metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from digitlab.core.atomic import atomic_write_text
from digitlab.core.config import TrainConfig
from digitlab.core.formatting import DASH, num, pct
from digitlab.core.rundir import RunDir
from digitlab.evaluation.metrics import ECE_BINS
from digitlab.evaluation.sections import ensemble_markdown, finetune_markdown, realworld_markdown, robustness_markdown

TEST_SET_POLICY = (
    "The official test set was used only for this final report: never to choose checkpoints, learning rates "
    "or anything else. The checkpoint was chosen on the validation split."
)


def _before(test: dict[str, Any], key: str, fmt: str | None) -> str:
    """' (before temperature scaling: X)' when the run is calibrated."""
    raw = test.get("uncalibrated", {}).get(key)
    if raw is None:
        return ""
    return f" (before temperature scaling: {pct(raw) if fmt is None else fmt.format(raw)})"


def confusion_markdown(confusion: list[list[int]]) -> str:
    """A Markdown table: rows are true classes, columns predicted ones; the diagonal in bold."""
    k = len(confusion)
    lines = ["| true \\ pred | " + " | ".join(str(j) for j in range(k)) + " |",
             "|---:|" + "---:|" * k]  # fmt: skip
    for i, row in enumerate(confusion):
        cells = [f"**{c}**" if i == j else ("·" if c == 0 else str(c)) for j, c in enumerate(row)]
        lines.append(f"| **{i}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    run_dir: Path | RunDir,
    metrics: dict[str, Any],
    out_dir: Path | None = None,
    config: TrainConfig | None = None,
) -> Path:
    """Write report.md (into `out_dir`, default the run directory) from a metrics.json-shaped dict."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
    out_dir = Path(out_dir) if out_dir is not None else rd.root
    if config is None and rd.config.exists():
        config = rd.read_config()
    lines = [f"# Run report: `{rd.root.name}`", "", *_header(metrics, config)]
    if metrics.get("test"):
        lines += ["", *_test_section(metrics["test"], config.data if config else None)]
    if metrics.get("members"):  # an ensemble: its members, their own validation and test figures
        lines += ["", ensemble_markdown(metrics).rstrip()]
    if metrics.get("finetune"):  # a fine-tuned run: its parent, the feedback, before/after (evaluation.finetune)
        lines += ["", finetune_markdown(metrics).rstrip()]
    if metrics.get("realworld"):  # kept across re-evaluations: `evaluate --realworld` stored it in metrics.json
        lines += ["", realworld_markdown(metrics["realworld"]).rstrip()]
    for key in ("robustness", "robustness_val"):  # likewise kept: `evaluate --robustness`, `evaluate_robustness`
        if metrics.get(key):
            lines += ["", robustness_markdown(metrics[key]).rstrip()]
    lines += _figures(out_dir / "plots")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def _header(metrics: dict[str, Any], config: TrainConfig | None) -> list[str]:
    """The table of what the run is: preset, model, size, data, device, time, epochs, validation figures."""
    val = metrics.get("val") or {}
    rows = [
        ("Preset", metrics.get("preset") or (config.preset if config else None)),
        ("Model", metrics.get("model") or (config.model if config else None)),
        ("Parameters", num(metrics.get("params"))),
        ("Seed", metrics.get("seed", config.seed if config else None)),
        ("Training data", config.data if config else None),
        ("Device", metrics.get("device")),
        ("CPU", metrics.get("cpu")),
        ("Precision", metrics.get("precision", "").removeprefix("precision: ") or None),
        ("Recipe", metrics.get("recipe", "").removeprefix("recipe: ") or None),
        ("PyTorch", metrics.get("torch")),
        ("Training time", num(metrics.get("train_seconds"), "{:,.1f} s")),
        ("Epochs (best)", f"{num(metrics.get('epochs'))} ({num(metrics.get('best_epoch'))})"),
        ("Validation accuracy", pct(val.get("accuracy"))
         + (f" (loss {val['loss']:.4f})" if val.get("loss") is not None else "")),
    ]  # fmt: skip
    ablation = metrics.get("val_ablation") or {}
    for key, label in (("without_tta", "Validation without TTA"), ("without_ema", "Validation without the EMA")):
        if key in ablation:  # what each trick bought, on validation (the test set chose nothing)
            rows.append((label, pct(ablation[key])))
    return ["| | |", "|---|---|", *(f"| {k} | {DASH if v is None else v} |" for k, v in rows)]


def _test_section(test: dict[str, Any], train_data: str | None) -> list[str]:
    """The test set's section: what was evaluated, the accuracy with its interval, per class, calibration."""
    lo, hi = test["accuracy_ci95"]
    dataset = test.get("dataset", train_data)
    lines = [f"## Test set: {dataset}", ""]
    if test.get("own_test_set", True):
        limit = test.get("test_limit")
        what = f"the first {test['n']:,} images (test_limit)" if limit else f"all {test['n']:,} images"
        lines.append(f"Evaluated on {what} of the official test split of `{test.get('data', dataset)}`.")
    else:
        lines.append(f"Evaluated on `{test.get('data', dataset)}` ({test['n']:,} images), a dataset "
                     f"other than the one this model was trained on (`{train_data}`).")  # fmt: skip
    return lines + [
        "", f"> {TEST_SET_POLICY}", "",
        f"**Test accuracy: {pct(test['accuracy'])}** (95% CI {pct(lo)}–{pct(hi)}, Wilson score "
        f"interval); {test['errors']:,} errors out of {test['n']:,}.",
        "",
        f"Checkpoint `checkpoint/{test.get('checkpoint', 'best')}.pt`; test-time augmentation "
        f"{'on' if test.get('tta') else 'off'}; temperature {test.get('temperature', 1.0):g}"
        + (" (from calibration.json)." if test.get("temperature", 1.0) != 1.0 else " (uncalibrated)."),
        "", "### Per class (scikit-learn `classification_report`)", "",
        "```", test["classification_report"].rstrip(), "```",
        "", "### Calibration", "",
        f"- Negative log-likelihood (mean): {test['nll']:.4f}" + _before(test, "nll", "{:.4f}"),
        f"- Expected calibration error ({test.get('ece_bins', ECE_BINS)} equal-width bins): "
        f"{pct(test['ece'])}" + _before(test, "ece", None),
        *([f"- Temperature T = {test['temperature']:g}, fitted on the validation split after training "
           "(`calibration.json`); the test set played no part in it."] if "uncalibrated" in test else []),
        "", "### Confusion matrix (rows: true digit, columns: predicted digit)", "",
        confusion_markdown(test["confusion"]),
    ]  # fmt: skip


def _figures(plot_dir: Path) -> list[str]:
    """The "Figures" section: each plot that is there, with its title."""
    figures = [("curves", "Training curves"), ("confusion", "Confusion matrix"),
               ("errors", "Misclassified test images"), ("reliability", "Reliability diagram")]  # fmt: skip
    present = [(n, t) for n, t in figures if (plot_dir / f"{n}.png").exists()]
    if not present:
        return []
    lines = ["", "## Figures", ""]
    for n, t in present:
        lines += [f"### {t}", "", f"![{t}](plots/{n}.png)", ""]
    return lines
