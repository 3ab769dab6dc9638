"""Render the results tables in README.md and docs/*.md from the measured JSON files, so they cannot drift.

    python scripts/make_tables.py          # rewrite every marked table in place
    python scripts/make_tables.py --check  # exit 1 and name the tables that differ from what the JSON gives
    python scripts/make_tables.py --check --root DIR   # the pages of another copy (tests: a copy with an edit)

A generated table sits between `<!-- table: NAME (scripts/make_tables.py) -->` and `<!-- /table -->`: edit the
JSON, or the table's builder in scripts/doctables/ (one module per page), never the table. Figures come from
bench/results/*.json and the bundled run (metrics.json, calibration.json); the few cells no JSON holds are literals
in their builder, each with a comment saying where it was measured. Reads JSON only, imports nothing of digitlab.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from doctables import cpu, finetune, realworld, results, robustness, serving
from doctables.common import REPO

MARKER = re.compile(
    r"(<!-- table: (?P<name>[\w-]+) \(scripts/make_tables\.py\) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S
)


# --------------------------------------------------------------------------------------------- the registry

TABLES: dict[str, tuple[str, Callable[[], str]]] = {
    "readme-results": ("README.md", results.readme_table),
    "results-main": ("docs/results.md", results.main_table),
    "results-accurate-ablation": ("docs/results.md", results.accurate_ablation),
    "results-cuda": ("docs/results.md", results.cuda_table),
    "realworld-main": ("docs/real-world.md", realworld.main_table),
    "realworld-stroke-width": ("docs/real-world.md", realworld.stroke_width),
    "realworld-stroke-width-robust": ("docs/real-world.md", realworld.stroke_width_robust),
    "realworld-confidence": ("docs/real-world.md", realworld.confidence),
    "realworld-other-corruptions": ("docs/real-world.md", realworld.other_corruptions),
    "robustness-fast": ("docs/robustness.md", robustness.fast_table),
    "robustness-recipe": ("docs/robustness.md", robustness.recipe),
    "robustness-robust": ("docs/robustness.md", robustness.robust_table),
    "serving-figures": ("docs/serving.md", serving.figures),
    "finetune-users": ("docs/training.md", finetune.users_table),
    "finetune-corrections": ("docs/training.md", finetune.corrections_table),
    "cpu-vs-reference": ("docs/cpu-speed.md", cpu.vs_reference),
    "cpu-fp32-fast": ("docs/cpu-speed.md", cpu.fast_candidates),
    "cpu-fp32-accurate": ("docs/cpu-speed.md", cpu.accurate_candidates),
    "cpu-profile": ("docs/cpu-speed.md", cpu.profile),
}


def regions(text: str) -> dict[str, str]:
    """The marked tables of a page: {name: the text between its two markers}."""
    return {m["name"]: m["body"] for m in MARKER.finditer(text)}


def splice(text: str, name: str, body: str) -> str:
    """`text` with the table `name` replaced by `body` (a table and the blank line before the end marker)."""

    def put(m: re.Match[str]) -> str:
        return m.group(1) + body + m.group(4) if m["name"] == name else m.group(0)

    return MARKER.sub(put, text)


def rendered(name: str) -> str:
    return TABLES[name][1]() + "\n"


def stale(root: Path = REPO) -> list[str]:
    """Names of the tables whose text under `root` differs from what the JSON gives (or whose markers are missing)."""
    found: dict[str, dict[str, str]] = {}
    out = []
    for name, (page, _) in TABLES.items():
        have = found.setdefault(page, regions((root / page).read_text())).get(name)
        if have != rendered(name):
            out.append(name)
    return out


def write(root: Path = REPO) -> list[str]:
    """Rewrite every stale table in place; the names rewritten (a table without its markers is an error)."""
    names = stale(root)
    for name in names:
        page = root / TABLES[name][0]
        text = page.read_text()
        if name not in regions(text):
            raise SystemExit(f"{page.name}: no <!-- table: {name} (scripts/make_tables.py) --> marker to fill")
        page.write_text(splice(text, name, rendered(name)))
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a table differs from what the JSON gives")
    parser.add_argument("--root", type=Path, default=REPO, help="where README.md and docs/ are (default: this repo)")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.root)
        if names:
            print(f"tables out of date: {', '.join(names)} (run python scripts/make_tables.py)", file=sys.stderr)
        return 1 if names else 0
    names = write(args.root)
    print(f"rewrote {', '.join(names)}" if names else "every table is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
