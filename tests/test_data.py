"""Dataset loaders: embedded MNIST, IDX/CSV/image-folder formats, every bad-data case, splits, `data` CLI."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from conftest import MNIST_DIR, run_cli
from digitlab.core.errors import ConfigError, DataError
from digitlab.data import catalog
from digitlab.data import datasets as data
from digitlab.data.catalog import IDX_NAMES, named_dataset_dir
from digitlab.data.datasets import (
    Split,
    export_image_folder,
    load_dataset,
    load_eval_split,
    load_idx_dir,
    load_image_folder,
    load_kaggle_csv,
    parse_idx,
    pixel_stats,
    stratified_split,
    verify_dataset,
)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = (0x800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def fake_split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10)


def write_idx_dir(directory: Path, train: Split, test: Split | None = None, gz: bool = True, sums: bool = True) -> Path:
    """An MNIST-format directory holding `train` (and `test`), gzip-compressed or raw, with SHA256SUMS."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": train.images, "train_labels": train.labels}
    if test is not None:
        arrays |= {"test_images": test.images, "test_labels": test.labels}
    lines = []
    for key, array in arrays.items():
        raw = idx_bytes(array)
        stem = IDX_NAMES[key]
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw, mtime=0))
        else:
            (directory / stem).write_bytes(raw)
        lines.append(f"{hashlib.sha256(raw).hexdigest()}  {stem}\n")
    if sums:
        (directory / "SHA256SUMS").write_text("".join(lines))
    return directory


@pytest.fixture
def small_dir(tmp_path: Path) -> Path:
    return write_idx_dir(tmp_path / "small", fake_split(30, 0), fake_split(10, 1))


def assert_data_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "DataError messages are printed as one line"
    return message


# --------------------------------------------------------------------------------------------- real data


def test_embedded_mnist(mnist):
    assert mnist.name == "mnist"
    assert Path(mnist.source) == MNIST_DIR
    assert mnist.train.images.shape == (60000, 28, 28) and mnist.train.images.dtype == np.uint8
    assert mnist.test.images.shape == (10000, 28, 28)
    assert mnist.train.labels.dtype == np.int64
    train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.class_counts(mnist.train.labels).tolist() == train_counts
    assert data.class_counts(mnist.test.labels).tolist() == test_counts
    assert mnist.train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    mean, std = pixel_stats(mnist.train.images)
    assert mean == pytest.approx(0.1307, abs=5e-5) and std == pytest.approx(0.3081, abs=5e-5)
    # white ink on black background
    assert mnist.train.images[:, 0, 0].max() == 0 and mnist.train.images.max() == 255


def test_pixel_stats_matches_numpy():
    images = fake_split(7, 3).images
    mean, std = pixel_stats(images)
    assert mean == pytest.approx((images / 255).mean()) and std == pytest.approx((images / 255).std())


def test_load_eval_split_is_the_test_split(mnist):
    split = load_eval_split("mnist")
    assert len(split) == 10000 and np.array_equal(split.labels, mnist.test.labels)


def test_verify_named_mnist_checks_all_four_files():
    ds, checked = verify_dataset("mnist")
    assert sorted(checked) == sorted(IDX_NAMES.values())
    assert len(ds.train) == 60000


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST is not installed")
def test_fashion_mnist_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv("DIGITLAB_DATA", str(tmp_path))  # no local copy: falls back to the system one
    ds, checked = verify_dataset("fashion-mnist")  # no SHA256SUMS there: uses the published checksums
    assert ds.name == "fashion-mnist" and Path(ds.source) == FASHION_DIR
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    assert data.class_counts(ds.train.labels).tolist() == [6000] * 10
    assert data.class_counts(ds.test.labels).tolist() == [1000] * 10
    assert len(checked) == 4


# --------------------------------------------------------------------------------------------- IDX formats


def test_small_idx_dir_gz(small_dir):
    ds = load_dataset(small_dir)
    assert ds.name == "small" and len(ds.train) == 30 and len(ds.test) == 10
    assert np.array_equal(ds.train.images, fake_split(30, 0).images)
    assert np.array_equal(ds.test.labels, fake_split(10, 1).labels)
    _, checked = verify_dataset(small_dir)
    assert len(checked) == 4


def test_raw_idx_dir(tmp_path):
    directory = write_idx_dir(tmp_path / "raw", fake_split(20, 0), fake_split(5, 1), gz=False)
    assert not list(directory.glob("*.gz"))
    ds = load_dataset(directory)
    assert np.array_equal(ds.train.images, fake_split(20, 0).images)
    assert ds.train.labels.tolist() == fake_split(20, 0).labels.tolist()
    assert len(ds.test) == 5


def test_idx_dir_without_test_or_checksums(tmp_path):
    directory = write_idx_dir(tmp_path / "d", fake_split(12, 0), sums=False)
    ds, checked = verify_dataset(directory)
    assert ds.test is None and len(ds.train) == 12 and checked == []
    assert len(load_eval_split(directory)) == 12


def test_parse_idx_round_trip():
    labels = np.array([3, 1, 4], dtype=np.uint8)
    assert parse_idx(idx_bytes(labels)).tolist() == [3, 1, 4]


def _replace(directory: Path, stem: str, content: bytes, gz: bool = True) -> None:
    (directory / f"{stem}.gz").write_bytes(gzip.compress(content, mtime=0) if gz else content)


def _corrupt_missing(d: Path) -> None:
    (d / f"{IDX_NAMES['train_labels']}.gz").unlink()


def _corrupt_half_test_pair(d: Path) -> None:
    (d / f"{IDX_NAMES['test_labels']}.gz").unlink()


def _corrupt_magic(d: Path) -> None:
    raw = bytearray(idx_bytes(fake_split(30, 0).images))
    raw[2:4] = b"\x0d\x03"  # float dtype
    _replace(d, IDX_NAMES["train_images"], bytes(raw))
    (d / "SHA256SUMS").unlink()


def _corrupt_truncated(d: Path) -> None:
    raw = idx_bytes(fake_split(30, 0).images)
    _replace(d, IDX_NAMES["train_images"], raw[:-100])
    (d / "SHA256SUMS").unlink()


def _corrupt_truncated_header(d: Path) -> None:
    _replace(d, IDX_NAMES["train_labels"], idx_bytes(np.zeros(30))[:6])
    (d / "SHA256SUMS").unlink()


def _corrupt_checksum(d: Path) -> None:
    labels = fake_split(30, 0).labels.copy()
    labels[0] = 9
    _replace(d, IDX_NAMES["train_labels"], idx_bytes(labels))


def _corrupt_count(d: Path) -> None:
    _replace(d, IDX_NAMES["train_labels"], idx_bytes(fake_split(29, 0).labels))
    (d / "SHA256SUMS").unlink()


def _corrupt_not_gzip(d: Path) -> None:
    _replace(d, IDX_NAMES["train_images"], b"this is not gzip at all" * 10, gz=False)


def _corrupt_truncated_gzip(d: Path) -> None:
    path = d / f"{IDX_NAMES['train_images']}.gz"
    path.write_bytes(path.read_bytes()[:-500])


def _corrupt_gzip_body(d: Path) -> None:
    path = d / f"{IDX_NAMES['train_images']}.gz"
    raw = bytearray(path.read_bytes())
    for i in range(40, len(raw) - 40, 97):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _corrupt_deflate_stream(d: Path) -> None:
    path = d / f"{IDX_NAMES['train_labels']}.gz"  # labels compress, so byte 10 starts a deflate block
    raw = bytearray(path.read_bytes())
    raw[10] = 0xFF  # invalid block type -> zlib.error
    path.write_bytes(bytes(raw))


def _corrupt_label_range(d: Path) -> None:
    _replace(d, IDX_NAMES["train_labels"], idx_bytes(np.full(30, 12)))
    (d / "SHA256SUMS").unlink()


def _corrupt_image_size(d: Path) -> None:
    _replace(d, IDX_NAMES["train_images"], idx_bytes(np.zeros((30, 27, 27))))
    (d / "SHA256SUMS").unlink()


def _corrupt_swapped(d: Path) -> None:
    _replace(d, IDX_NAMES["train_labels"], idx_bytes(np.zeros((30, 28, 28))))
    (d / "SHA256SUMS").unlink()


def _corrupt_sums_file(d: Path) -> None:
    (d / "SHA256SUMS").write_text("not a checksum line\n")


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (_corrupt_missing, "missing file: .*train-labels-idx1-ubyte"),
        (_corrupt_half_test_pair, "missing file: .*t10k-labels-idx1-ubyte"),
        (_corrupt_magic, "wrong magic number 0x00000d03"),
        (_corrupt_truncated, "truncated or padded file"),
        (_corrupt_truncated_header, "too short to be an IDX file"),
        (_corrupt_checksum, "checksum mismatch: .*train-labels-idx1-ubyte.gz"),
        (_corrupt_count, "30 images but 29 labels"),
        (_corrupt_not_gzip, "cannot read .*train-images-idx3-ubyte.gz"),
        (_corrupt_truncated_gzip, "cannot read .*train-images-idx3-ubyte.gz"),
        (_corrupt_gzip_body, "cannot read .*train-images-idx3-ubyte.gz"),
        (_corrupt_deflate_stream, "cannot read .*train-labels-idx1-ubyte.gz: Error -3 .*invalid block type"),
        (_corrupt_label_range, "labels must be 0..9"),
        (_corrupt_image_size, "images are 27x27, expected 28x28"),
        (_corrupt_swapped, "expected 3-D images and 1-D labels"),
        (_corrupt_sums_file, "SHA256SUMS:1: expected"),
    ],
    ids=lambda v: v.__name__.removeprefix("_corrupt_") if callable(v) else None,
)
def test_bad_idx_dir(small_dir, corrupt, match):
    corrupt(small_dir)
    assert_data_error(match, load_dataset, small_dir)


def test_not_a_directory(tmp_path):
    assert_data_error("not a directory", load_idx_dir, tmp_path / "nope")


# --------------------------------------------------------------------------------------------- names


def test_unknown_dataset_name():
    message = assert_data_error("unknown dataset 'emnist'", named_dataset_dir, "emnist")
    assert "mnist, fashion-mnist" in message
    assert_data_error("no such dataset or path: emnist .*names: mnist, fashion-mnist", load_dataset, "emnist")
    assert_data_error("no such dataset or path: emnist", verify_dataset, "emnist")


def test_named_dataset_not_installed(monkeypatch, tmp_path):
    monkeypatch.setenv("DIGITLAB_DATA", str(tmp_path))
    monkeypatch.setattr(catalog, "SYSTEM_DIRS", {})
    expected = "dataset 'fashion-mnist' not found .*digitlab data download fashion-mnist"
    assert_data_error(expected, load_dataset, "fashion-mnist")


def test_named_dataset_from_data_dir(monkeypatch, tmp_path):
    write_idx_dir(tmp_path / "mnist", fake_split(10, 0), fake_split(10, 1))
    monkeypatch.setenv("DIGITLAB_DATA", str(tmp_path))
    ds = load_dataset("mnist")
    assert ds.name == "mnist" and len(ds.train) == 10


def test_unsupported_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert_data_error("unsupported format", load_dataset, tmp_path / "notes.txt")


# --------------------------------------------------------------------------------------------- Kaggle CSV

PIXEL_HEADER = ",".join(f"pixel{i}" for i in range(784))


def write_csv(path: Path, split: Split, labelled: bool = True) -> Path:
    rows = [("label," if labelled else "") + PIXEL_HEADER]
    for i in range(len(split)):
        pixels = ",".join(map(str, split.images[i].ravel().tolist()))
        rows.append(f"{split.labels[i]},{pixels}" if labelled else pixels)
    path.write_text("\n".join(rows) + "\n")
    return path


def test_kaggle_train_csv(tmp_path):
    split = fake_split(12, 4)
    ds = load_dataset(write_csv(tmp_path / "train.csv", split))
    assert ds.name == "train" and ds.test is None
    assert np.array_equal(ds.train.images, split.images) and ds.train.labels.tolist() == split.labels.tolist()
    assert ds.train.labels.dtype == np.int64 and ds.train.images.dtype == np.uint8


def test_kaggle_test_csv_has_no_labels(tmp_path):
    split = fake_split(5, 5)
    path = write_csv(tmp_path / "test.csv", split, labelled=False)
    loaded = load_kaggle_csv(path)
    assert loaded.labels is None and np.array_equal(loaded.images, split.images)
    assert_data_error("no labels", load_eval_split, path)
    assert_data_error("no labels", export_image_folder, loaded, tmp_path / "out")


def _row(label="3", fill="0", n=784) -> str:
    return ",".join([label] + [fill] * n)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty file"),
        ("label," + ",".join(f"pixel{i}" for i in range(700)) + "\n" + _row(n=700), "found 700"),
        ("id," + PIXEL_HEADER + "\n" + _row(), "found 785"),
        (_row() + "\n" + _row(), "no header row"),
        ("label," + PIXEL_HEADER + "\n", "no rows"),
        ("label," + PIXEL_HEADER + "\n" + _row(fill="x"), "non-numeric or ragged"),
        ("label," + PIXEL_HEADER + "\n" + _row() + "\n" + _row(n=783), "non-numeric or ragged"),
        ("label," + PIXEL_HEADER + "\n" + _row(n=783) + "\n" + _row(n=783), "header has 785 columns but"),
        ("label," + PIXEL_HEADER + "\n" + _row(fill=""), "non-numeric|NaN"),
        ("label," + PIXEL_HEADER + "\n" + _row(fill="nan"), "NaN"),
        ("label," + PIXEL_HEADER + "\n" + _row(fill="300"), "pixel values must be whole numbers in 0..255"),
        ("label," + PIXEL_HEADER + "\n" + _row(fill="0.5"), "pixel values must be whole numbers"),
        ("label," + PIXEL_HEADER + "\n" + _row(label="12"), "labels must be whole numbers 0..9"),
    ],
    ids=str.split(
        "empty few-columns no-label-column-name no-header header-only non-numeric ragged rows-narrower"
        " empty-cells nan pixel-range fractional label-range"
    ),
)
def test_bad_csv(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    assert_data_error(match, load_dataset, path)


def test_binary_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\xff\xfe\x00\x81" * 100)
    assert_data_error("bad.csv", load_kaggle_csv, path)


def test_missing_csv(tmp_path):
    assert_data_error("missing file", load_kaggle_csv, tmp_path / "train.csv")


# --------------------------------------------------------------------------------------------- image folders


def test_image_folder_round_trip_library(tmp_path):
    split = fake_split(23, 6)
    assert export_image_folder(split, tmp_path / "out") == 23
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [str(c) for c in range(10)]
    assert (tmp_path / "out" / "3" / "13.png").is_file()
    loaded = load_image_folder(tmp_path / "out")
    order = np.lexsort((np.arange(23), split.labels))  # the loader reads label folders in order, then names
    assert np.array_equal(loaded.images, split.images[order])
    assert np.array_equal(loaded.labels, split.labels[order])
    assert_data_error("not an empty folder", export_image_folder, split, tmp_path / "out")


def test_image_folder_resizes_and_greyscales(tmp_path):
    from PIL import Image

    (tmp_path / "7").mkdir()
    Image.new("RGB", (56, 40), (255, 255, 255)).save(tmp_path / "7" / "a.png")
    (tmp_path / "7" / "notes.txt").write_text("ignored")
    split = load_dataset(tmp_path).train
    assert split.images.shape == (1, 28, 28) and split.labels.tolist() == [7]
    assert split.images.min() == 255


def test_empty_image_folder(tmp_path):
    assert_data_error("no images found", load_dataset, tmp_path)
    (tmp_path / "3").mkdir()
    assert_data_error("no images found", load_image_folder, tmp_path)


def test_image_folder_bad_class_name(tmp_path):
    (tmp_path / "cat").mkdir()
    assert_data_error("class folders must be named 0..9", load_image_folder, tmp_path)


def test_image_folder_corrupt_image(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "x.png").write_bytes(b"not a png")
    assert_data_error("cannot read image .*x.png", load_image_folder, tmp_path)


# --------------------------------------------------------------------------------------------- splits


def test_stratified_split(mnist):
    labels = mnist.train.labels
    train_idx, val_idx = stratified_split(labels, 0.2, seed=0)
    assert len(train_idx) == 48000 and len(val_idx) == 12000
    assert np.intersect1d(train_idx, val_idx).size == 0
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(60000))
    share = np.bincount(labels) / len(labels)
    assert np.abs(np.bincount(labels[val_idx]) / len(val_idx) - share).max() < 1e-3
    assert np.abs(np.bincount(labels[train_idx]) / len(train_idx) - share).max() < 1e-3
    again = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(again[0], train_idx) and np.array_equal(again[1], val_idx)
    other = stratified_split(labels, 0.2, seed=1)
    assert not np.array_equal(other[1], val_idx)


def test_stratified_split_edges():
    labels = np.arange(100) % 10
    train_idx, val_idx = stratified_split(labels, 0.0, seed=0)
    assert len(train_idx) == 100 and len(val_idx) == 0
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match="val_fraction"):
            stratified_split(labels, bad, seed=0)
    assert_data_error("cannot make a stratified", stratified_split, np.array([0, 0, 0, 1]), 0.5, 0)


# --------------------------------------------------------------------------------------------- CLI


def _one_error_line(result) -> str:
    """Exit 1, one `error: ...` message on stderr, no traceback (Rich may wrap it at the terminal width)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error:"), result.stderr
    assert sum("error" in line for line in lines) == 1, result.stderr
    return "".join(lines)


def test_cli_info_mnist():
    result = run_cli("data", "info", "mnist")
    assert result.returncode == 0, result.stderr
    for text in ("60000", "10000", "5923", "1135", "0.1307", "0.3081", str(MNIST_DIR)):
        assert text in result.stdout


def test_cli_verify_ok_and_corrupted_copy(tmp_path, small_dir):
    result = run_cli("data", "verify", small_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok small: train 30, test 10; 4 file checksums match")

    corrupt = tmp_path / "mnist-copy"
    corrupt.mkdir()
    for file in MNIST_DIR.iterdir():
        (corrupt / file.name).symlink_to(file)
    (corrupt / "t10k-labels-idx1-ubyte.gz").unlink()
    labels = bytearray(gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[-1] = (labels[-1] + 1) % 10  # one wrong label: only the checksum can tell
    (corrupt / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))
    line = _one_error_line(run_cli("data", "verify", corrupt))
    assert "checksum mismatch" in line and "t10k-labels-idx1-ubyte.gz" in line


def test_cli_unknown_dataset():
    line = _one_error_line(run_cli("data", "info", "emnist"))
    assert "no such dataset or path: emnist" in line and "mnist, fashion-mnist" in line


def test_cli_export_png_round_trip(tmp_path, mnist):
    out = tmp_path / "png"
    result = run_cli("data", "export-png", "mnist", "--out", out, "--split", "test", "--limit", "40")
    assert result.returncode == 0, result.stderr
    assert "wrote 40 PNGs" in result.stdout
    assert (out / "7" / "0000.png").is_file()  # the first test digit is a 7; names are zero-padded indices
    loaded = load_dataset(out)
    assert loaded.test is None and len(loaded.train) == 40
    order = np.lexsort((np.arange(40), mnist.test.labels[:40]))
    assert np.array_equal(loaded.train.images, mnist.test.images[:40][order])
    assert np.array_equal(loaded.train.labels, mnist.test.labels[:40][order])

    again = run_cli("data", "export-png", "mnist", "--out", out, "--limit", "2")
    assert "not an empty folder" in _one_error_line(again)
    bad_split = run_cli("data", "export-png", "mnist", "--out", tmp_path / "x", "--split", "val")
    assert bad_split.returncode == 2 and "Traceback" not in bad_split.stderr


def test_cli_export_png_csv_has_no_test_split(tmp_path):
    csv = write_csv(tmp_path / "train.csv", fake_split(3, 0))
    line = _one_error_line(run_cli("data", "export-png", csv, "--out", tmp_path / "o", "--split", "test"))
    assert "has no test split" in line
