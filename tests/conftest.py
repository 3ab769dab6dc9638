"""Shared fixtures: the embedded MNIST, tiny subsets, and a CLI runner that goes through the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / "data" / "mnist"

# The framing cache (digitlab.data.framed) of the tests, CLI subprocesses included: never the user's own.
os.environ.setdefault("DIGITLAB_CACHE", str(REPO / ".pytest_cache" / "digitlab"))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `digitlab ARGS` as a user would (through main(), so errors are one line, not a traceback)."""
    return subprocess.run([sys.executable, "-m", "digitlab.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="session")
def mnist():
    from digitlab.data.datasets import load_dataset

    return load_dataset("mnist")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, mnist):
    """A real but tiny trained `fast` run directory (1 epoch on 1,000 images, evaluated on 300 test images).

    Shared by every test that needs a run: treat it as read-only (copy it before changing anything).
    """
    from digitlab.core.config import get_preset
    from digitlab.evaluation.pipeline import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = get_preset("fast").override(limit=1000, epochs=2, batch_size=64, test_limit=300,
                                         model_args={"widths": [8, 16, 32]})  # fmt: skip
    train(config, out, dataset=mnist)
    return out


@pytest.fixture(scope="session")
def onnx_run(tiny_run, tmp_path_factory):
    """A copy of `tiny_run` with model.onnx (the server's default backend when it is there), exported once.

    Read-only, like `tiny_run`: copy it before changing anything.
    """
    import shutil

    from digitlab.inference.export import export_onnx

    out = shutil.copytree(tiny_run, tmp_path_factory.mktemp("onnx") / "run")
    export_onnx(out)
    return out


# ------------------------------------------------------------------------------------------------ feedback store


@pytest.fixture(scope="session", autouse=True)
def feedback_db_env(tmp_path_factory):
    """Every `digitlab serve` the tests start (in this process or in a subprocess) stores its feedback in a
    temporary SQLite file, never in the user's data folder."""
    import os

    url = f"sqlite:///{tmp_path_factory.mktemp('feedback') / 'feedback.db'}"
    previous = os.environ.get("DIGITLAB_FEEDBACK_DB")
    os.environ["DIGITLAB_FEEDBACK_DB"] = url
    yield url
    if previous is None:
        os.environ.pop("DIGITLAB_FEEDBACK_DB", None)
    else:
        os.environ["DIGITLAB_FEEDBACK_DB"] = previous


@pytest.fixture(scope="session")
def pg_cluster():
    """A throw-away PostgreSQL cluster for the session (tests/pg_cluster.py). In CI ($CI set) a cluster that
    cannot start fails the tests that need it; elsewhere they are skipped only when PostgreSQL is not installed."""
    import os

    from pg_cluster import PgCluster, PgUnavailable, find_binaries

    try:
        cluster = PgCluster.start()
    except PgUnavailable as e:
        if find_binaries() is None and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
            pytest.skip(f"PostgreSQL is not installed: {e}")
        pytest.fail(f"cannot start a PostgreSQL cluster: {e}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster, request) -> str:
    """The URL of a new, empty PostgreSQL database for one test."""
    import re
    import uuid

    name = re.sub(r"\W", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:8]
    return pg_cluster.create_database(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a `slow` test run first: `scripts/test.sh` hands whole files to two workers (`--dist
    loadfile`), and a long file started last would leave one worker running it alone."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each file stays
