"""download_dataset against a local HTTP server: success, mirror fallback, checksum mismatch, atomicity."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import MNIST_DIR, run_cli
from digitlab.core.errors import DataError
from digitlab.data.catalog import IDX_NAMES, KNOWN_SHA256
from digitlab.data.datasets import load_idx_dir, read_checksums
from digitlab.data.download import MIRRORS, download_dataset, gunzip_sha256

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
STEMS = sorted(IDX_NAMES.values())


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = (0x800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def fake_files(seed: int) -> dict[str, bytes]:
    """Decompressed IDX bytes of a tiny MNIST-format dataset (12 train, 5 test images)."""
    rng = np.random.default_rng(seed)
    return {
        IDX_NAMES["train_images"]: idx_bytes(rng.integers(0, 256, (12, 28, 28))),
        IDX_NAMES["train_labels"]: idx_bytes(np.arange(12) % 10),
        IDX_NAMES["test_images"]: idx_bytes(rng.integers(0, 256, (5, 28, 28))),
        IDX_NAMES["test_labels"]: idx_bytes(np.arange(5)),
    }


class Server:
    """A static file server on 127.0.0.1 (port 0) serving `root`, recording the paths requested."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                if self.path.startswith("/short/"):  # promises more bytes than it sends, then hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(b"\x1f\x8b" + b"\0" * 100)
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        handler = functools.partial(Handler, directory=root)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def mirror(self, name: str) -> Path:
        (self.root / name).mkdir(exist_ok=True)
        return self.root / name


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "www")
    srv.root.mkdir()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def fake(server):
    """Mirrors: good/ (the fake dataset), bad/ (other content), notgz/ (not gzip), and its checksums."""
    good = fake_files(0)
    for stem, raw in good.items():
        (server.mirror("good") / f"{stem}.gz").write_bytes(gzip.compress(raw))
        (server.mirror("bad") / f"{stem}.gz").write_bytes(gzip.compress(raw + b"\0"))
        (server.mirror("notgz") / f"{stem}.gz").write_bytes(raw)
    return {stem: hashlib.sha256(raw).hexdigest() for stem, raw in good.items()}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name.startswith(".") or p.suffix == ".part")


def test_download_success(server, fake, tmp_path):
    dest = tmp_path / "deep" / "dest"
    result = download_dataset("mnist", dest, mirrors=[f"{server.url}/good"], progress=False, checksums=fake)
    assert result == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(["SHA256SUMS", *(f"{s}.gz" for s in STEMS)])
    assert read_checksums(dest) == fake
    ds = load_idx_dir(dest)
    assert len(ds.train) == 12 and len(ds.test) == 5
    assert ds.train.labels.tolist() == (np.arange(12) % 10).tolist()
    assert sorted(server.requests) == sorted(f"/good/{s}.gz" for s in STEMS)


def test_download_with_progress_bar(server, fake, tmp_path, capsys):
    download_dataset("mnist", tmp_path / "d", mirrors=[f"{server.url}/good/"], progress=True, checksums=fake)
    assert len(load_idx_dir(tmp_path / "d").train) == 12
    assert capsys.readouterr().out == ""  # the bar goes to stderr


def test_fallback_to_next_mirror(server, fake, tmp_path):
    mirrors = [closed_port_url(), *(f"{server.url}/{m}" for m in ("missing", "short", "notgz", "good"))]
    dest = download_dataset("mnist", tmp_path / "d", mirrors=mirrors, progress=False, checksums=fake)
    assert read_checksums(dest) == fake and leftovers(dest) == []
    for stem in STEMS:
        assert gunzip_sha256(dest / f"{stem}.gz") == fake[stem]
        assert [r for r in server.requests if r.endswith(f"/{stem}.gz")] == [
            f"/missing/{stem}.gz",
            f"/short/{stem}.gz",
            f"/notgz/{stem}.gz",
            f"/good/{stem}.gz",
        ]


def test_checksum_mismatch(server, fake, tmp_path):
    dest = tmp_path / "d"
    with pytest.raises(DataError) as info:
        download_dataset("mnist", dest, mirrors=[f"{server.url}/bad"], progress=False, checksums=fake)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("could not download ")
    assert f"{server.url}/bad/" in message and "checksum mismatch" in message
    assert list(dest.iterdir()) == []  # no temp file, no half-written file, no SHA256SUMS


def test_all_mirrors_fail_lists_each(server, fake, tmp_path):
    mirrors = [f"{server.url}/missing", f"{server.url}/bad", f"{server.url}/short", closed_port_url()]
    with pytest.raises(DataError) as info:
        download_dataset("mnist", tmp_path / "d", mirrors=mirrors, progress=False, checksums=fake)
    message = str(info.value)
    assert "HTTP 404" in message and "checksum mismatch" in message and mirrors[3] in message
    assert "transfer cut short: got 102 of 100000 bytes" in message and "\n" not in message
    assert message.count("; ") == 3
    assert leftovers(tmp_path / "d") == []


def test_skips_files_already_present(server, fake, tmp_path):
    dest = download_dataset("mnist", tmp_path / "d", mirrors=[f"{server.url}/good"], progress=False, checksums=fake)
    server.requests.clear()
    (dest / "SHA256SUMS").unlink()
    download_dataset("mnist", dest, mirrors=[f"{server.url}/missing"], progress=False, checksums=fake)
    assert server.requests == []
    assert read_checksums(dest) == fake


def test_replaces_corrupt_existing_file(server, fake, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    stem = IDX_NAMES["train_labels"]
    (dest / f"{stem}.gz").write_bytes(b"garbage")
    download_dataset("mnist", dest, mirrors=[f"{server.url}/good"], progress=False, checksums=fake)
    assert gunzip_sha256(dest / f"{stem}.gz") == fake[stem]
    assert leftovers(dest) == []


def test_unknown_name_and_bad_dest(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'emnist'; can download: mnist, fashion-mnist"):
        download_dataset("emnist", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        download_dataset("mnist", tmp_path / "file", mirrors=["http://127.0.0.1:9/"])


def test_known_checksums_match_local_copies():
    assert KNOWN_SHA256["mnist"] == read_checksums(MNIST_DIR)
    assert set(MIRRORS) == set(KNOWN_SHA256)
    if FASHION_DIR.is_dir():
        for stem, digest in KNOWN_SHA256["fashion-mnist"].items():
            assert gunzip_sha256(FASHION_DIR / f"{stem}.gz") == digest


def test_cli_download_real_mnist_from_local_mirror(server, tmp_path):
    mirror = server.mirror("mnist")
    for stem in STEMS:
        (mirror / f"{stem}.gz").symlink_to(MNIST_DIR / f"{stem}.gz")
    dest = tmp_path / "dest"
    result = run_cli(
        "data",
        "download",
        "mnist",
        "--dir",
        dest,
        "--mirror",
        f"{server.url}/missing",
        "--mirror",
        f"{server.url}/mnist",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "ok mnist" in result.stdout
    assert read_checksums(dest) == KNOWN_SHA256["mnist"]
    assert leftovers(dest) == []

    failed = run_cli(
        "data",
        "download",
        "fashion-mnist",
        "--dir",
        tmp_path / "f",
        "--mirror",
        f"{server.url}/mnist",
        "--no-progress",
    )
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("error: could not download") and "checksum mismatch" in failed.stderr


def test_interrupted_download_leaves_nothing(monkeypatch, tmp_path):
    import digitlab.data.download as download

    def fetch_then_interrupt(url, target, timeout, progress, label):
        target.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_fetch", fetch_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        download_dataset("mnist", tmp_path / "d", mirrors=["http://127.0.0.1:9/"], progress=False)
    assert list((tmp_path / "d").iterdir()) == []
