"""The README's commands stay true: CI runs its two first-screen commands, and every `digitlab` line in the README
and docs/ parses; links between the pages resolve in a clone; the results tables are what their JSON files say."""

import re
import shlex
import shutil
import subprocess
import sys

from typer.testing import CliRunner

from conftest import REPO
from digitlab.cli import app

README = (REPO / "README.md").read_text()
DOCS = "\n".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
CI = (REPO / ".ci" / "run").read_text()


def code_lines(text: str = README) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def test_first_screen_commands_are_what_ci_runs():
    setup, tests = code_lines()[:2]
    install = setup.split(" && .venv/bin/digitlab")[0]
    assert install in CI and tests in CI
    assert "digitlab train --preset fast" in setup


def test_every_digitlab_command_in_the_readme_exists():
    runner = CliRunner()
    commands = [line for line in code_lines(README + DOCS) if line.startswith("digitlab ")]
    assert len(commands) >= 15
    for line in commands:
        words = shlex.split(line)[1:]
        path = [w for w in words[:2] if not w.startswith("-") and w in {"data", "runs", "feedback"}] or []
        name = words[: len(path) + 1]
        res = runner.invoke(app, [*name, "--help"])
        assert res.exit_code == 0, (line, res.output)
        for option in (w for w in words if w.startswith("--")):
            assert option.split("=")[0] in res.output, (line, option)


def test_links_in_readme_and_docs_resolve():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), (page.name, target)


def test_readme_reads_in_five_minutes():
    assert len(README.encode()) < 8_500


def check_tables(root=REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), "--check", "--root", str(root)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_results_tables_are_what_the_json_files_give():
    res = check_tables()
    assert res.returncode == 0, res.stderr


def test_a_table_edited_by_hand_or_unmarked_is_named(tmp_path):
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        target = tmp_path / page.relative_to(REPO)
        target.parent.mkdir(exist_ok=True)
        shutil.copy(page, target)
    readme, serving = tmp_path / "README.md", tmp_path / "docs" / "serving.md"
    text = readme.read_text()
    figure = text.index("99.", text.index("<!-- table: readme-results"))  # the first accuracy in that table
    readme.write_text(text[:figure] + "98." + text[figure + 3 :])
    serving.write_text(serving.read_text().replace("<!-- /table -->", "", 1))
    res = check_tables(tmp_path)
    assert res.returncode == 1
    assert "readme-results" in res.stderr and "serving-figures" in res.stderr and "results-main" not in res.stderr
