"""Report sections (Markdown) that evaluations add to report.md: ensembles, real-world input, corruptions, tuning."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from digitlab.core.formatting import pct
from digitlab.data.corruptions import CORRUPTIONS

PLOT_NAMES = {"test": "robustness.png", "val": "robustness-val.png"}


HEADINGS = {"test": "Corruption robustness (MNIST-C suite, test set)",
            "val": "Corruption robustness (MNIST-C suite, validation split)"}  # fmt: skip


REPORT_HEADING = "## Real-world input"
FINETUNE_HEADING = "## Fine-tuning from feedback"


# ---------------------------------------------------------------------------------------------- ensemble


def ensemble_markdown(metrics: dict[str, Any]) -> str:
    """The report's "Ensemble" section from metrics.json (members' figures next to the ensemble's)."""
    members = metrics.get("members") or []
    val = metrics.get("val") or {}
    test = metrics.get("test") or {}
    lines = [
        "## Ensemble", "",
        f"The mean of {len(members)} runs' calibrated logits: probabilities = softmax((1/M) Σᵢ zᵢ/Tᵢ / T), each "
        "member's logits zᵢ divided by its own temperature Tᵢ, then by the ensemble's temperature T (refitted on "
        "the validation split, with the \"not a digit\" rule).", "",
        "| member | model | parameters | training s | Tᵢ | validation accuracy | test accuracy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in members:
        params = f"{r['params']:,}" if isinstance(r.get("params"), int) else "—"
        secs = f"{r['train_seconds']:,.1f}" if isinstance(r.get("train_seconds"), (int, float)) else "—"
        lines.append(f"| `{Path(r['run']).name}` | {r['model']} | {params} | {secs} | {r['temperature']:.3g} | "
                     f"{pct(r.get('val_accuracy'))} | {pct(r.get('test_accuracy'))} |")  # fmt: skip
    params, secs = metrics.get("params"), metrics.get("train_seconds")
    lines += [
        f"| **ensemble** | ensemble | {f'{params:,}' if isinstance(params, int) else '—'} | "
        f"{f'{secs:,.1f}' if isinstance(secs, (int, float)) else '—'} | — | {pct(val.get('accuracy'))} | "
        f"**{pct(test.get('accuracy'))}** |",
        "",
        f"All figures but the test column are on the members' shared validation split ({val.get('n', '—')} "
        "images). The members are to be chosen on validation accuracy alone and the ensemble was built and "
        "calibrated without reading the test set; each member's test accuracy is copied from its own "
        "metrics.json for comparison and chose nothing. Parameters and training time are the members' sums.",
    ]
    selection = (metrics.get("ensemble") or {}).get("selection")
    if selection:
        taken = ", ".join(f"`{Path(st['added']).name}` ({st['val_loss']:.4f})" for st in selection["steps"])
        lines += ["", f"The members were chosen from {len(selection['candidates'])} runs by {selection['method']}, "
                      f"at most {selection['max_members']}; taken in this order (validation log-loss after each): "
                      f"{taken}."]  # fmt: skip
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- real-world input


def realworld_markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The report section: one row per set, accuracy with digitlab preprocessing beside the naive baseline."""
    lines = [REPORT_HEADING, "",
             "Accuracy on digitlab's own non-MNIST sets (`data/realworld/`, made by `scripts/make_realworld.py`): "
             "MNIST test digits re-drawn as browser-canvas exports and as phone photos of ink on paper, and "
             "digits rendered from handwriting and print fonts. *digitlab* runs each image through "
             "`digitlab.data.preprocess` (images it calls empty count as errors); *naive resize* converts to "
             "grey, inverts dark-on-light and squashes the whole picture to 28x28, as typical demos do. "
             "*lowres*, *pen* and *page* (`digitlab.data.synth`): MNIST test digits as low-resolution scans shown "
             "enlarged (blocky or smooth), drawn with thin and thick pens (with handwriting-font glyphs), and "
             "small on big pages. *Refused*: called empty or not a digit (the run's rule); *read*: answered "
             "and right.",
             "", "| set | n | accuracy (digitlab preprocessing) | naive resize baseline | empty | not a digit "
             "| refused | accuracy on answered | read |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in results.items():
        extra = (f"{r['not_a_digit']:,} | {pct(r['refused'])} | {pct(r['answered_accuracy'])} | "
                 f"{pct(r['read'])}") if "read" in r else "— | — | — | —"  # fmt: skip
        lines.append(f"| {name} | {r['n']:,} | {pct(r['accuracy'])} | {pct(r['naive_accuracy'])} "
                     f"| {r.get('empty', 0):,} | {extra} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def replace_realworld_section(text: str, section: str) -> str:
    """Put `section` in place of an existing one with the same heading, else before "## Figures", else last."""
    pattern = re.compile(rf"^{re.escape(REPORT_HEADING)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    figures = re.search(r"^## Figures\n", text, re.M)
    if figures:
        return text[: figures.start()] + section + "\n" + text[figures.start() :]
    return (text.rstrip() + "\n\n" if text.strip() else "") + section


# ---------------------------------------------------------------------------------------------- corruptions


def suite_rows(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """ "clean", then each corruption in the suite's order (metrics.json stores them sorted by name)."""
    scores = result["corruptions"]
    order = [n for n in CORRUPTIONS if n in scores] + sorted(n for n in scores if n not in CORRUPTIONS)
    return {"clean": result["clean"], **{n: scores[n] for n in order}}


def error_ratio(error: float, clean_error: float) -> str:
    if clean_error <= 0:
        return "—" if error <= 0 else "∞"
    return f"{error / clean_error:.1f}×"


def robustness_markdown(result: dict[str, Any]) -> str:
    """The report section: clean and each corruption, raw 28x28 and through `preprocess`, with error ratios."""
    split = result.get("split", "test")
    clean = result["clean"]
    base, base_pp = 1 - clean["accuracy"], 1 - clean["accuracy_preprocessed"]
    what = "official test images" if split == "test" else "images of the run's validation split"
    limit = f" (the first {result['n']:,}: limit)" if result.get("limit") else ""
    lines = [
        f"## {HEADINGS.get(split, HEADINGS['test'])}", "",
        f"MNIST-C's 15 corruptions (Mu & Gilmer 2019, its single severity; `digitlab.data.corruptions`, seed "
        f"{result['seed']}) applied to {result['n']:,} {what}{limit}; test-time augmentation "
        f"{'on' if result.get('tta') else 'off'}. *Raw*: the corrupted 28x28 straight into the model, as MNIST-C "
        "scores it (arg-max; *refused* is the share the \"not a digit\" rule would refuse). *Preprocessed*: "
        "through `digitlab.data.preprocess` and the calibrated predictor, as the app and API answer; a refusal "
        "(\"empty\" or \"not a digit\") counts as not correct. *Error × clean*: the error rate over the clean "
        "images' error rate on the same path.",
        "",
        f"**Mean accuracy over the {len(result['corruptions'])} corruptions (raw): "
        f"{pct(result['mean_accuracy'])}** (clean {pct(clean['accuracy'])}; worst "
        f"{result['worst']} {pct(result['min_accuracy'])}); preprocessed "
        f"{pct(result['mean_accuracy_preprocessed'])}.",
        "",
        "| images | accuracy (raw) | error × clean | refused (raw) | accuracy (preprocessed) | error × clean "
        "| refused (preprocessed) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name, s in suite_rows(result).items():
        lines.append(
            f"| {name} | {pct(s['accuracy'])} | {error_ratio(1 - s['accuracy'], base)} | {pct(s['refused'])} "
            f"| {pct(s['accuracy_preprocessed'])} | {error_ratio(1 - s['accuracy_preprocessed'], base_pp)} "
            f"| {pct(s['refused_preprocessed'])} |"
        )
    plot = PLOT_NAMES.get(split, PLOT_NAMES["test"])
    lines += ["", f"![Corruption robustness](plots/{plot})"]
    return "\n".join(lines) + "\n"


def comparison_rows(metrics: dict[str, Any]) -> list[tuple[str, int, str, str, str]]:
    """(set, n, before, after, refused before → after) of a fine-tuned run's metrics, for the report and the CLI."""
    f = metrics["finetune"]
    names = {"mnist_test": "MNIST test", "feedback_held_out": f"held-out feedback ({f['split']['held_out_sessions']} "
             "session(s))", "feedback_trained": "feedback trained on"}  # fmt: skip
    rows = []
    for key, name in names.items():
        c = (f.get("compare") or {}).get(key) or {}
        if not c:
            continue
        after = c.get("after")
        if key == "mnist_test" and after is None:  # filled in once the test evaluation is done
            after = (metrics.get("test") or {}).get("accuracy")
        refused = "—" if key == "mnist_test" else f"{pct(c.get('refused_before'))} → {pct(c.get('refused_after'))}"
        rows.append((name, int(c["n"]), pct(c.get("before")), pct(after), refused))
    return rows


def finetune_markdown(metrics: dict[str, Any]) -> str:
    """The report's section for a fine-tuned run (report.write_report adds it when metrics has "finetune")."""
    f = metrics["finetune"]
    p, fb, sp, o, tr = f["parent"], f["feedback"], f["split"], f["options"], f.get("training", {})
    only = "" if fb.get("model") is None else f" collected on model `{fb['model']}`"
    lines = [FINETUNE_HEADING, "",
             f"Fine-tuned from `{p['run']}` (checkpoint SHA-256 `{p['checkpoint_sha256'][:16]}…`) on "
             f"{fb['rows']:,} feedback rows{only} of `{fb['url']}` ({fb['skipped_empty']:,} seen as empty left "
             f"out): {sp['train_rows']:,} rows of {sp['train_sessions']} session(s) trained on, "
             f"{sp['held_out_rows']:,} rows of {sp['held_out_sessions']} other session(s) held out (seed "
             f"{sp['seed']}). {o['steps']:,} steps of {o['feedback_per_batch']} feedback + {o['replay_per_batch']} "
             f"MNIST training images, augmented as the parent's config says; {o['optimizer']} at lr {o['lr']:.3g} "
             f"(warm-up, then linear decay to 0)" + (f"; {tr['seconds']:.1f} s." if "seconds" in tr else "."),
             "", "Accuracy: the arg-max of the model's outputs (with the run's test-time augmentation); refused: "
             "the share each run's own \"not a digit\" rule refuses. The held-out sessions chose nothing.",
             "", "| set | n | before (parent) | after (this run) | refused before → after |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, n, before, after, refused in comparison_rows(metrics):
        lines.append(f"| {name} | {n:,} | {before} | {after} | {refused} |")
    return "\n".join(lines) + "\n"
