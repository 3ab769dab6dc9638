"""Datasets: load MNIST-format IDX files, Kaggle CSVs and image folders into one in-memory form, and split them."""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab.errors import DataError

IMAGE_SIDE = 28
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX magic numbers: 0x0000 | dtype 0x08 (ubyte) | number of dimensions.
IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}
KNOWN_DATASETS = ("mnist", "fashion-mnist")
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}


@dataclass(frozen=True)
class Split:
    """Images as uint8 (N, 28, 28), white ink on black; labels as int64 (N,), or None when unlabelled."""

    images: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray | slice) -> Split:
        return Split(self.images[idx], None if self.labels is None else self.labels[idx])


@dataclass(frozen=True)
class Dataset:
    """A training split, an optional held-out test split, and where they came from."""

    name: str
    train: Split
    test: Split | None
    source: str


# --------------------------------------------------------------------------------------------- IDX files


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(f"missing file: {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as e:  # gzip raises these on a truncated or non-gzip file
        raise DataError(f"cannot read {path}: {e}") from None


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file (ubyte, 1 or 3 dimensions) into an array."""
    if len(raw) < 8:
        raise DataError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if ndim not in IDX_MAGIC or magic != IDX_MAGIC[ndim]:
        raise DataError(f"{name}: wrong magic number 0x{magic:08x} (expected 0x00000801 or 0x00000803)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(f"{name}: truncated or padded file ({len(raw)} bytes, header says {expected})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    raise DataError(f"missing file: {directory / stem}[.gz]")


def read_checksums(directory: Path) -> dict[str, str]:
    """SHA256SUMS maps each IDX file's *decompressed* name to the SHA-256 of its decompressed bytes."""
    path = directory / "SHA256SUMS"
    if not path.exists():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def _load_idx_pair(directory: Path, images: str, labels: str, sums: dict[str, str]) -> Split:
    arrays = []
    for stem in (images, labels):
        path = _find_idx(directory, stem)
        raw = _read_bytes(path)
        if stem in sums and hashlib.sha256(raw).hexdigest() != sums[stem]:
            raise DataError(f"checksum mismatch: {path} does not match {directory / 'SHA256SUMS'}")
        arrays.append(parse_idx(raw, str(path)))
    x, y = arrays
    if x.ndim != 3 or y.ndim != 1:
        raise DataError(f"{directory}: expected 3-D images and 1-D labels, got {x.ndim}-D and {y.ndim}-D")
    if len(x) != len(y):
        raise DataError(f"{directory}: {len(x)} images but {len(y)} labels in {images}/{labels}")
    if x.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{directory}: images are {x.shape[1]}x{x.shape[2]}, expected 28x28")
    return Split(x, y.astype(np.int64))


def load_idx_dir(directory: Path, name: str | None = None) -> Dataset:
    """Load the four IDX files (gz or raw) of an MNIST-format directory, checking SHA256SUMS when present."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"not a directory: {directory}")
    sums = read_checksums(directory)
    train = _load_idx_pair(directory, IDX_NAMES["train_images"], IDX_NAMES["train_labels"], sums)
    try:
        test = _load_idx_pair(directory, IDX_NAMES["test_images"], IDX_NAMES["test_labels"], sums)
    except DataError as e:
        if "missing file" not in str(e):
            raise
        test = None
    return Dataset(name or directory.name, train, test, str(directory))


# --------------------------------------------------------------------------------------------- Kaggle CSV


def load_kaggle_csv(path: Path) -> Split:
    """Kaggle "digit-recognizer": train.csv has `label` + pixel0..pixel783; test.csv has only the pixels."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"missing file: {path}")
    with path.open() as f:
        header = f.readline().strip().split(",")
    has_label = header[:1] == ["label"]
    n_pixels = len(header) - int(has_label)
    if n_pixels != IMAGE_SIDE * IMAGE_SIDE:
        raise DataError(f"{path}: expected 784 pixel columns (plus optional 'label'), found {n_pixels}")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DataError(f"{path}: non-numeric or ragged CSV ({e})") from None
    if len(table) == 0:
        raise DataError(f"{path}: no rows")
    pixels = table[:, int(has_label) :]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values must be in 0..255")
    labels = table[:, 0].astype(np.int64) if has_label else None
    if labels is not None and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must be 0..9")
    return Split(pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels)


# --------------------------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_image_folder(root: Path) -> Split:
    """A folder `root/<label>/*.png`: images are converted to greyscale 28x28 as they are (no preprocessing)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"not a directory: {root}")
    images, labels = [], []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if not label_dir.name.isdigit() or not 0 <= int(label_dir.name) <= 9:
            raise DataError(f"{label_dir}: class folders must be named 0..9")
        for file in sorted(label_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as im:
                    im = im.convert("L")
                    if im.size != (IMAGE_SIDE, IMAGE_SIDE):
                        im = im.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.LANCZOS)
                    images.append(np.asarray(im, dtype=np.uint8))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"cannot read image {file}: {e}") from None
            labels.append(int(label_dir.name))
    if not images:
        raise DataError(f"{root}: no images found (expected {root}/<0-9>/*.png)")
    return Split(np.stack(images), np.array(labels, dtype=np.int64))


# --------------------------------------------------------------------------------------------- dispatch


def project_data_dir() -> Path:
    """Where named datasets live: $DIGITLAB_DATA, else the repository's `data/` (the embedded MNIST copy)."""
    env = os.environ.get("DIGITLAB_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "data"


def named_dataset_dir(name: str) -> Path:
    if name not in KNOWN_DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(KNOWN_DATASETS)} or give a path")
    local = project_data_dir() / name
    if local.is_dir():
        return local
    system = SYSTEM_DIRS.get(name)
    if system is not None and system.is_dir():
        return system
    raise DataError(f"dataset {name!r} not found in {local}; run `digitlab data download {name}`")


def load_dataset(spec: str | Path) -> Dataset:
    """Load a dataset by name (`mnist`, `fashion-mnist`) or by path (IDX directory, Kaggle CSV, image folder)."""
    spec_str = str(spec)
    if spec_str in KNOWN_DATASETS:
        return load_idx_dir(named_dataset_dir(spec_str), name=spec_str)
    path = Path(spec_str)
    if not path.exists():
        raise DataError(f"no such dataset or path: {spec_str} (known names: {', '.join(KNOWN_DATASETS)})")
    if path.is_file() and path.suffix.lower() == ".csv":
        return Dataset(path.stem, load_kaggle_csv(path), None, str(path))
    if path.is_dir():
        if any((path / f"{IDX_NAMES['train_images']}{s}").exists() for s in (".gz", "")):
            return load_idx_dir(path)
        return Dataset(path.name, load_image_folder(path), None, str(path))
    raise DataError(f"{path}: unsupported dataset format (expected an IDX directory, a .csv, or an image folder)")


def load_eval_split(spec: str | Path) -> Split:
    """The split to evaluate on: the official test split where the dataset has one, else all of it."""
    ds = load_dataset(spec)
    split = ds.test if ds.test is not None else ds.train
    if split.labels is None:
        raise DataError(f"{spec}: has no labels, cannot evaluate")
    return split


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of a seeded split that keeps every class's share in both parts."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if val_fraction <= 0:
        return idx, idx[:0]
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, stratify=labels, random_state=seed)
    return np.sort(train_idx), np.sort(val_idx)
