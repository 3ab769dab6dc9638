"""Real-world set images as `preprocess` frames them (the model's 28x28 inputs), cached on disk.

    inputs, ok = framed_inputs("page-tune", np.arange(200))   # ok[i]: preprocess framed image i as a digit

Every new run's calibration frames over a thousand `*-tune` images (a digit on a 700x700 page takes 30 ms), and
the result depends only on the set's file and on the preprocessing code. So the inputs are kept in
`cache_dir()/framed/`, under a key made of both: a changed set or any change to `digitlab.data`'s code frames
afresh. Deleting the folder is always safe; an unwritable one only means framing again next time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
from pathlib import Path

import numpy as np

from digitlab.core.atomic import atomic_write
from digitlab.core.errors import StorageError

__all__ = ["cache_dir", "framed_inputs"]


def cache_dir() -> Path:
    """$DIGITLAB_CACHE, else $XDG_CACHE_HOME/digitlab, else ~/.cache/digitlab."""
    if os.environ.get("DIGITLAB_CACHE"):
        return Path(os.environ["DIGITLAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "digitlab"


@functools.lru_cache(maxsize=1)
def _code_digest() -> bytes:
    """A digest of the data layer's source: framing is `preprocess` and everything it calls, all in this package."""
    h = hashlib.blake2b(digest_size=16)
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.digest()


def _cache_path(name: str, set_file: Path) -> Path:
    h = hashlib.blake2b(_code_digest(), digest_size=12)
    h.update(set_file.read_bytes())
    return cache_dir() / "framed" / f"{name}-{h.hexdigest()}.npz"


def _read(path: Path) -> dict[int, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {int(i): (im if ok else None) for i, im, ok in zip(z["index"], z["images"], z["ok"], strict=True)}
    except (OSError, KeyError, ValueError):  # missing, or a file this code did not write: frame again
        return {}


def _write(path: Path, known: dict[int, np.ndarray | None]) -> None:
    index = np.array(sorted(known), np.int64)
    images = np.stack([known[i] if known[i] is not None else np.zeros((28, 28), np.uint8) for i in index.tolist()])
    ok = np.array([known[i] is not None for i in index.tolist()], bool)
    with contextlib.suppress(StorageError):  # a read-only home or a full disk costs the next run the framing
        atomic_write(path, lambda tmp: tmp.write_bytes(_npz_bytes(index=index, images=images, ok=ok)))


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def framed_inputs(name: str, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (n, 28, 28) model inputs, bool (n,) framed as a digit) of the images `index` of real-world set
    `name`, as `preprocess` frames them (zeros where it found no digit)."""
    from digitlab.data.preprocess import preprocess
    from digitlab.data.realworld import load_realworld, realworld_dir

    set_file = realworld_dir() / f"{name}.npz"
    path = _cache_path(name, set_file) if set_file.is_file() else None
    known = _read(path) if path is not None else {}
    missing = [i for i in dict.fromkeys(np.asarray(index, np.int64).tolist()) if i not in known]
    if missing:
        ds = load_realworld(name)
        for i in missing:
            prep = preprocess(ds.images[i])
            known[i] = prep.image if prep.status == "ok" else None
        if path is not None:
            _write(path, known)
    picked = [known[i] for i in np.asarray(index, np.int64).tolist()]
    images = np.stack([im if im is not None else np.zeros((28, 28), np.uint8) for im in picked]) if picked else None
    ok = np.array([im is not None for im in picked], bool)
    return (images if images is not None else np.zeros((0, 28, 28), np.uint8)), ok
