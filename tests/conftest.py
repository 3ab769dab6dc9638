"""Shared fixtures: the embedded MNIST, tiny subsets, and a CLI runner that goes through the real entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / "data" / "mnist"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `digitlab ARGS` as a user would (through main(), so errors are one line, not a traceback)."""
    return subprocess.run([sys.executable, "-m", "digitlab.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="session")
def mnist():
    from digitlab.data import load_dataset

    return load_dataset("mnist")
