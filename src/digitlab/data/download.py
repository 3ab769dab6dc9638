"""Download MNIST-format datasets: mirrors in order, checksums, atomic writes."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from digitlab.core.atomic import atomic_write_text
from digitlab.core.errors import DataError
from digitlab.data.catalog import IDX_NAMES, KNOWN_SHA256

# Base URLs, tried in order; each file is fetched as <base>/<name>.gz.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

CHUNK = 1 << 16
USER_AGENT = "digitlab (+https://github.com/; python urllib)"


def gunzip_sha256(path: Path, compressed: bool | None = None) -> str:
    """SHA-256 of a gzip file's decompressed bytes or a plain file's bytes (default: gzip if `.gz`)."""
    digest = hashlib.sha256()
    if compressed is None:
        compressed = Path(path).suffix == ".gz"
    opener = gzip.open if compressed else open
    with opener(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _present_and_valid(dest: Path, stem: str, expected: str) -> bool:
    """The file the loader would pick (`.gz` first, else raw) is there and has the expected content."""
    for candidate in (dest / f"{stem}.gz", dest / stem):
        if candidate.is_file():
            try:
                return gunzip_sha256(candidate) == expected
            except (OSError, EOFError, zlib.error):
                return False
    return False


def _fetch(url: str, target: Path, timeout: float, progress, label: str) -> None:
    """Stream `url` into the already-open temp path `target`, advancing a Rich progress task if given."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response, target.open("wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        task = None if progress is None else progress.add_task(label, total=total)
        received = 0
        try:
            while block := response.read(CHUNK):
                out.write(block)
                received += len(block)
                if task is not None:
                    progress.advance(task, len(block))
        finally:
            if task is not None:
                progress.remove_task(task)
        if total is not None and received != total:
            raise ConnectionError(f"transfer cut short: got {received} of {total} bytes")


def _reason(e: object) -> str:
    return (str(e) or type(e).__name__).replace("\n", " ")


def _download_one(stem: str, dest: Path, mirrors: list[str], expected: str, timeout: float, progress) -> list[str]:
    """Fetch `<stem>.gz` from the first mirror that serves the right content; return the failures seen."""
    failures: list[str] = []
    final = dest / f"{stem}.gz"
    for base in mirrors:
        url = f"{base.rstrip('/')}/{stem}.gz"
        fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=dest)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            _fetch(url, tmp, timeout, progress, f"{stem}.gz")
            try:
                actual = gunzip_sha256(tmp, compressed=True)
            except (OSError, EOFError, zlib.error) as e:  # not gzip, or cut short
                failures.append(f"{url}: not a valid gzip file ({_reason(e)})")
                continue
            if actual != expected:
                failures.append(f"{url}: checksum mismatch (sha256 {actual[:12]}..., not {expected[:12]}...)")
                continue
            os.replace(tmp, final)
            return []
        except urllib.error.HTTPError as e:
            failures.append(f"{url}: HTTP {e.code} {e.reason}")
        except urllib.error.URLError as e:
            failures.append(f"{url}: {_reason(e.reason)}")
        except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, cut transfers, bad URLs
            failures.append(f"{url}: {_reason(e)}")
        finally:
            tmp.unlink(missing_ok=True)
    return failures


def _write_sums(dest: Path, sums: dict[str, str]) -> None:
    atomic_write_text(dest / "SHA256SUMS", "".join(f"{digest}  {stem}\n" for stem, digest in sorted(sums.items())))


def download_dataset(
    name: str,
    dest: Path,
    mirrors: list[str] | None = None,
    progress: bool = True,
    timeout: float = 30,
    checksums: dict[str, str] | None = None,
) -> Path:
    """Download the four IDX `.gz` files of `name` into `dest` and write `dest/SHA256SUMS`; return `dest`.

    Each file is tried on each mirror base URL in order, streamed into a temp file in `dest`, checked against
    the SHA-256 of its decompressed content, and only then renamed into place. Files already present with the
    right checksum are skipped. `checksums` (decompressed file name -> SHA-256) overrides the published ones.
    """
    if name not in KNOWN_SHA256:
        raise DataError(f"unknown dataset {name!r}; can download: {', '.join(KNOWN_SHA256)}")
    expected = {**KNOWN_SHA256[name], **(checksums or {})}
    mirrors = list(mirrors) if mirrors else MIRRORS[name]
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise DataError(f"not a directory: {dest}")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {dest}: {e}") from None

    todo = [stem for stem in IDX_NAMES.values() if not _present_and_valid(dest, stem, expected[stem])]
    bar = None
    if progress and todo:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
    with bar if bar is not None else contextlib.nullcontext():
        for stem in todo:
            failures = _download_one(stem, dest, mirrors, expected[stem], timeout, bar)
            if failures:
                raise DataError(f"could not download {stem}.gz for {name}: " + "; ".join(failures))
    _write_sums(dest, {stem: expected[stem] for stem in IDX_NAMES.values()})
    return dest
