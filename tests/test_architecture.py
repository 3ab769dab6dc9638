"""The package's shape: layer contracts (import-linter), no import cycles, short modules and functions, docstrings."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "digitlab"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
# Functions allowed over MAX_FUNCTION_LINES, with why; each must stay over it (else take it off this list).
LONG_FUNCTIONS: dict[str, str] = {}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The digitlab modules `path` imports, wherever the import statement is (in functions and TYPE_CHECKING too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "digitlab")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "digitlab":
            for a in node.names:  # `from digitlab.data import datasets` imports the module digitlab.data.datasets
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return out


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def functions() -> dict[str, int]:
    """Every function's length in lines (`def` to its last line), by module.qualified.name."""
    lengths = {}
    for name, path in modules().items():

        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lengths[f"{prefix}.{child.name}"] = child.end_lineno - child.lineno + 1
                    walk(child, f"{prefix}.{child.name}")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}.{child.name}")

        walk(ast.parse(path.read_text()), name)
    return lengths


def test_the_layer_contracts_hold():
    """pyproject.toml's import-linter contracts: the layers, and what inference and serving must never import."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout and "layers" in res.stdout


def test_no_import_cycles_among_digitlab_modules():
    mods = modules()
    graph = {name: imports(path, set(mods)) - {name} for name, path in mods.items()}
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself finds one


def test_the_import_graph_sees_function_local_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from digitlab.data import datasets\n    import digitlab.core.rundir\n")
    assert imports(src, {"digitlab.data.datasets"}) == {"digitlab.data.datasets", "digitlab.core.rundir"}


def test_modules_are_short():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_every_module_says_what_it_owns_in_one_line():
    for name, path in modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
        lines = doc.strip("\n").splitlines()
        assert lines and lines[0].strip(), f"{name}: no module docstring"
        assert len(lines) == 1 or not lines[1].strip(), f"{name}: the docstring's summary is not one line"


def test_functions_are_short():
    lengths = functions()
    long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
    stale = {name: lengths.get(name) for name in LONG_FUNCTIONS if lengths.get(name, 0) <= MAX_FUNCTION_LINES}
    assert not stale, f"allowed long functions that are gone or short now (take them off LONG_FUNCTIONS): {stale}"


COMMANDS = (
    "train",
    "evaluate",
    "predict",
    "read",
    "calibrate",
    "export",
    "app",
    "serve",
    "ensemble",
    "finetune",
    "data",
    "runs",
    "feedback",
)


def test_the_entry_points_are_one_command():
    """`python -m digitlab`, `python -m digitlab.cli` and pyproject's console script `digitlab.cli:main`."""
    assert 'digitlab = "digitlab.cli:main"' in (REPO / "pyproject.toml").read_text()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "200"}
    for module in ("digitlab", "digitlab.cli"):
        res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=env,
                             timeout=120)  # fmt: skip
        assert res.returncode == 0, res.stderr
        listed = [f"│ {c} " for c in COMMANDS]
        assert all(c in res.stdout for c in listed), res.stdout
        assert [res.stdout.index(c) for c in listed] == sorted(res.stdout.index(c) for c in listed)  # in help order
