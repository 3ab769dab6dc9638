"""Datasets: MNIST-format IDX files, Kaggle CSVs and image folders in one in-memory form, and their splits."""

from __future__ import annotations

import gzip
import hashlib
import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab.core.config import TrainConfig
from digitlab.core.errors import ConfigError, DataError
from digitlab.data.catalog import IDX_NAMES, KNOWN_DATASETS, KNOWN_SHA256, named_dataset_dir

IMAGE_SIDE = 28
# IDX magic numbers: 0x0000 | dtype 0x08 (ubyte) | number of dimensions.
IDX_MAGIC = {1: 0x00000801, 3: 0x00000803}
NUM_CLASSES = 10


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
    if not path.is_file():
        raise DataError(f"not a file: {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; truncated gzip -> EOFError
        reason = str(e) or type(e).__name__
        raise DataError(f"cannot read {path}: {reason} (corrupt or truncated file?)") from None


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
        raise DataError(f"{name}: truncated header ({len(raw)} bytes, need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
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
    path = Path(directory) / "SHA256SUMS"
    if not path.exists():
        return {}
    sums = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or line.lstrip().startswith("#"):
            continue
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataError(f"{path}:{lineno}: expected '<sha256>  <file name>', got {line.strip()!r}")
        sums[parts[1].lstrip("*")] = digest
    return sums


def _load_idx_pair(
    directory: Path, images: str, labels: str, sums: dict[str, str], checked: list[str] | None = None
) -> Split:
    arrays = []
    for stem in (images, labels):
        path = _find_idx(directory, stem)
        raw = _read_bytes(path)
        if stem in sums:
            if hashlib.sha256(raw).hexdigest() != sums[stem]:
                raise DataError(f"checksum mismatch: {path} (SHA-256 of its content is not the expected one)")
            if checked is not None:
                checked.append(stem)
        arrays.append(parse_idx(raw, str(path)))
    x, y = arrays
    if x.ndim != 3 or y.ndim != 1:
        raise DataError(f"{directory}: expected 3-D images and 1-D labels, got {x.ndim}-D and {y.ndim}-D")
    if len(x) != len(y):
        raise DataError(f"{directory}: {len(x)} images but {len(y)} labels in {images}/{labels}")
    if len(x) == 0:
        raise DataError(f"{directory}: {images} holds no images")
    if x.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{directory}: images are {x.shape[1]}x{x.shape[2]}, expected 28x28")
    if y.max() >= NUM_CLASSES:
        raise DataError(f"{directory}: {labels} has label {int(y.max())}; labels must be 0..9")
    return Split(x, y.astype(np.int64))


def _idx_present(directory: Path, stem: str) -> bool:
    return any((directory / f"{stem}{suffix}").exists() for suffix in (".gz", ""))


def load_idx_dir(
    directory: Path,
    name: str | None = None,
    checksums: dict[str, str] | None = None,
    checked: list[str] | None = None,
) -> Dataset:
    """Load the four IDX files (gz or raw) of an MNIST-format directory, checking SHA256SUMS when present.

    `checksums` (decompressed file name -> SHA-256) is used where SHA256SUMS is absent or lacks a file; the
    names of the files whose checksum was verified are appended to `checked` when given. The test pair is
    optional (both files absent -> `test` is None); one of the two without the other is an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"not a directory: {directory}")
    sums = {**(checksums or {}), **read_checksums(directory)}
    train = _load_idx_pair(directory, IDX_NAMES["train_images"], IDX_NAMES["train_labels"], sums, checked)
    test = None
    if _idx_present(directory, IDX_NAMES["test_images"]) or _idx_present(directory, IDX_NAMES["test_labels"]):
        test = _load_idx_pair(directory, IDX_NAMES["test_images"], IDX_NAMES["test_labels"], sums, checked)
    return Dataset(name or directory.name, train, test, str(directory))


# --------------------------------------------------------------------------------------------- Kaggle CSV


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_kaggle_csv(path: Path) -> Split:
    """Kaggle "digit-recognizer": train.csv has `label` + pixel0..pixel783; test.csv has only the pixels."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"missing file: {path}")
    if not path.is_file():
        raise DataError(f"not a file: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            header = [h.strip().strip('"') for h in f.readline().strip().split(",")]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as a text CSV ({e})") from None
    if header == [""]:
        raise DataError(f"{path}: empty file (expected a header row: [label,]pixel0..pixel783)")
    if all(_is_number(h) for h in header):
        raise DataError(f"{path}: no header row (expected [label,]pixel0..pixel783 as the first line)")
    has_label = header[:1] == ["label"]
    n_pixels = len(header) - int(has_label)
    if n_pixels != IMAGE_SIDE * IMAGE_SIDE:
        raise DataError(f"{path}: expected 784 pixel columns (plus optional 'label'), found {n_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data" is reported below
            table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2, encoding="utf-8")
    except ValueError as e:  # also UnicodeDecodeError
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: non-numeric or ragged CSV ({reason})") from None
    if len(table) == 0:
        raise DataError(f"{path}: no rows")
    if table.shape[1] != len(header):
        raise DataError(f"{path}: the header has {len(header)} columns but the rows have {table.shape[1]}")
    if not np.isfinite(table).all():
        raise DataError(f"{path}: empty, NaN or infinite values")
    pixels = table[:, int(has_label) :]
    if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, np.round(pixels)):
        raise DataError(f"{path}: pixel values must be whole numbers in 0..255")
    labels = None
    if has_label:
        column = table[:, 0]
        if column.min() < 0 or column.max() > 9 or not np.array_equal(column, np.round(column)):
            raise DataError(f"{path}: labels must be whole numbers 0..9")
        labels = column.astype(np.int64)
    return Split(pixels.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels)


# --------------------------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_image_folder(root: Path) -> Split:
    """A folder `root/<label>/*.png`: images become greyscale 28x28 as they are (no other preprocessing)."""
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
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                raise DataError(f"cannot read image {file}: {e}") from None
            labels.append(int(label_dir.name))
    if not images:
        raise DataError(f"{root}: no images found (expected {root}/<0-9>/*.png)")
    return Split(np.stack(images), np.array(labels, dtype=np.int64))


def export_image_folder(split: Split, out: Path, limit: int | None = None, progress: bool = False) -> int:
    """Write `split` (its first `limit` images) as `out/<label>/<index>.png`, the format `load_image_folder`
    reads; `<index>` is the position in the split, zero-padded so that file order is index order."""
    from PIL import Image

    if split.labels is None:
        raise DataError("this split has no labels; an image folder needs them (out/<label>/*.png)")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not an empty folder; choose a new one")
    n = len(split) if limit is None else max(0, min(limit, len(split)))
    width = len(str(max(len(split) - 1, 0)))
    indices = range(n)
    if progress:
        from rich.console import Console
        from rich.progress import track

        indices = track(indices, description=f"writing {n} PNGs", console=Console(stderr=True), transient=True)
    try:
        for label in sorted(set(split.labels[:n].tolist())):
            (out / str(label)).mkdir(parents=True, exist_ok=True)
        for i in indices:
            Image.fromarray(np.ascontiguousarray(split.images[i])).save(
                out / str(int(split.labels[i])) / f"{i:0{width}d}.png"
            )
    except OSError as e:
        raise DataError(f"cannot write to {out}: {e}") from None
    return n


# --------------------------------------------------------------------------------------------- dispatch


def load_dataset(spec: str | Path) -> Dataset:
    """Load a dataset by name (`mnist`, `fashion-mnist`) or path (IDX directory, Kaggle CSV, image folder)."""
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
    raise DataError(f"{path}: unsupported format (expected an IDX directory, a .csv or an image folder)")


def load_eval_split(spec: str | Path) -> Split:
    """The split to evaluate on: the official test split where the dataset has one, else all of it."""
    ds = load_dataset(spec)
    split = ds.test if ds.test is not None else ds.train
    if split.labels is None:
        raise DataError(f"{spec}: has no labels, cannot evaluate")
    return split


def verify_dataset(spec: str | Path) -> tuple[Dataset, list[str]]:
    """Load a dataset with every check, and return it with the names of the files whose SHA-256 was verified.

    IDX directories are checked against their SHA256SUMS; a named dataset without one is checked against the
    published checksums in `digitlab.data.download`. CSVs and image folders get the structural checks only.
    """
    spec_str = str(spec)
    checked: list[str] = []
    if spec_str in KNOWN_DATASETS:
        directory = named_dataset_dir(spec_str)
        return load_idx_dir(directory, spec_str, KNOWN_SHA256[spec_str], checked), checked
    path = Path(spec_str)
    if path.is_dir() and _idx_present(path, IDX_NAMES["train_images"]):
        return load_idx_dir(path, checked=checked), checked
    return load_dataset(path), checked


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of uint8 pixels scaled to [0, 1], exactly, without a float copy."""
    if images.size == 0:
        raise DataError("no pixels to describe")
    counts = np.bincount(np.asarray(images, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum()
    mean = float((counts * values).sum() / n)
    var = float((counts * (values - mean) ** 2).sum() / n)
    return mean, math.sqrt(var)


def class_counts(labels: np.ndarray) -> np.ndarray:
    """How many examples of each class 0..9."""
    return np.bincount(labels, minlength=NUM_CLASSES)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of a seeded split that keeps every class's share in both parts."""
    from sklearn.model_selection import train_test_split

    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    idx = np.arange(len(labels))
    if val_fraction == 0:
        return idx, idx[:0]
    try:
        train_idx, val_idx = train_test_split(idx, test_size=val_fraction, stratify=labels, random_state=seed)
    except ValueError as e:  # e.g. a class with a single example, or fewer val examples than classes
        raise DataError(f"cannot make a stratified {val_fraction:g} validation split: {e}") from None
    return np.sort(train_idx), np.sort(val_idx)


def split_data(ds: Dataset, config: TrainConfig) -> tuple[Split, Split]:
    """(train, val): an optional seeded stratified subset (`limit`), then the stratified validation split."""
    train = ds.train
    if train.labels is None:
        raise ConfigError(f"{ds.source}: training data has no labels")
    if config.limit is not None and config.limit < len(train):
        keep, _ = stratified_split(train.labels, 1 - config.limit / len(train), config.effective_split_seed)
        train = train.subset(keep)
    tr, va = stratified_split(train.labels, config.val_fraction, config.effective_split_seed)
    return train.subset(tr), train.subset(va)
