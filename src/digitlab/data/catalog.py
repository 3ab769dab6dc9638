"""The named datasets (MNIST, Fashion-MNIST): where they live, their four IDX files and the published checksums."""

from __future__ import annotations

import os
from pathlib import Path

from digitlab.core.errors import DataError

KNOWN_DATASETS = ("mnist", "fashion-mnist")
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}  # Debian's dataset-fashion-mnist
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# SHA-256 of each file's *decompressed* IDX bytes (gzip containers differ between mirrors; content does not).
KNOWN_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}


def project_data_dir() -> Path:
    """Where named datasets live: $DIGITLAB_DATA, else the repository's `data/` (the embedded MNIST copy)."""
    env = os.environ.get("DIGITLAB_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "data"


def named_dataset_dir(name: str) -> Path:
    """The folder of a named dataset: in `project_data_dir()`, else the system's copy; else a one-line DataError."""
    if name not in KNOWN_DATASETS:
        known = ", ".join(KNOWN_DATASETS)
        raise DataError(f"unknown dataset {name!r}; choose one of: {known} or give a path")
    local = project_data_dir() / name
    if local.is_dir():
        return local
    system = SYSTEM_DIRS.get(name)
    if system is not None and system.is_dir():
        return system
    raise DataError(f"dataset {name!r} not found in {local}; run `digitlab data download {name}`")
