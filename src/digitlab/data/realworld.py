"""The real-world sets: `RealWorldSet` (images as users send them, with labels) and its compact .npz storage.

The sets are made by `digitlab.data.synth` (MNIST digits re-drawn as canvases, photos, scans, pens, pages) and
`digitlab.data.fonts` (font glyphs); `scripts/make_realworld.py` writes them to `data/realworld/` (committed, so
evaluation never needs the fonts), and `digitlab.evaluation.realworld` scores a run on them.
"""

from __future__ import annotations

import json
import lzma
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.core.atomic import atomic_write
from digitlab.core.errors import DataError

__all__ = ["CANVAS_MODES", "SET_NAMES", "RealWorldSet", "Source", "load_realworld", "realworld_dir", "save_realworld"]

SET_NAMES = ("canvas", "photo", "fonts", "lowres", "pen", "page")
# How a canvas leaves the browser: (0,0,0,0) background with black or white ink in alpha, or filled first.
# How a canvas leaves the browser: (0,0,0,0) background with black or white ink in alpha, or filled first.
CANVAS_MODES = ("rgba/black-ink", "rgba/white-ink", "rgb/white-on-black", "rgb/black-on-white")
FORMAT_VERSION = 1

Source = np.ndarray | bytes


@dataclass(frozen=True)
class RealWorldSet:
    """Source images as a user would send them, with their labels.

    `images[i]` is a uint8 array (H, W) L, (H, W, 3) RGB or (H, W, 4) RGBA, or the bytes of a JPEG file;
    `kinds[i]` says which format variant it is (e.g. "rgba/black-ink", "jpeg/rgb"); `origins[i]` where the
    digit came from ("mnist-test:1234", "font:breip/Breip.ttf"); `params` how it was drawn (for analysis:
    "height" and "pen" in px, "angle" in degrees, ...).
    """

    name: str
    images: Sequence[Source]
    labels: np.ndarray  # int64 (N,)
    kinds: np.ndarray  # str (N,)
    origins: np.ndarray  # str (N,)
    params: dict[str, np.ndarray] = field(default_factory=dict)  # how each image was drawn, float (N,) each

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: Sequence[int] | np.ndarray | slice) -> RealWorldSet:
        ids = np.arange(len(self))[idx]
        return RealWorldSet(self.name, [self.images[i] for i in ids], self.labels[ids], self.kinds[ids],
                            self.origins[ids], {k: v[ids] for k, v in self.params.items()})  # fmt: skip


def export_u8(a: np.ndarray, mode: str) -> np.ndarray:
    if mode == "rgba/black-ink":  # untouched pixels (0,0,0,0); black ink whose alpha is its coverage
        return np.dstack([np.zeros_like(a)] * 3 + [a])
    if mode == "rgba/white-ink":
        rgb = np.where(a > 0, 255, 0).astype(np.uint8)
        return np.dstack([rgb] * 3 + [a])
    if mode == "rgb/white-on-black":
        return np.dstack([a] * 3)
    if mode == "rgb/black-on-white":
        return np.dstack([255 - a] * 3)
    raise ValueError(f"unknown canvas mode {mode!r}")


def coverage_u8(image: np.ndarray, mode: str) -> np.ndarray:
    """The inverse of `export_u8`."""
    if mode.startswith("rgba/"):
        return image[..., 3]
    return image[..., 0] if mode == "rgb/white-on-black" else 255 - image[..., 0]


def realworld_dir() -> Path:
    """Where the committed sets live: $DIGITLAB_DATA/realworld when it exists, else the repository's copy."""
    env = os.environ.get("DIGITLAB_DATA")
    if env and (Path(env) / "realworld").is_dir():
        return Path(env) / "realworld"
    return Path(__file__).resolve().parents[3] / "data" / "realworld"


def _mode_of(kind: str) -> str:
    mode = next((m for m in CANVAS_MODES if kind.endswith(m)), None)
    if mode is None:
        raise ValueError(f"cannot store an image of kind {kind!r} losslessly (expected one of {CANVAS_MODES})")
    return mode


class _StoredImages(Sequence):
    """A stored set's images, rebuilt one at a time on access: a whole set of arrays would take ~0.5 GB."""

    def __init__(self, z: Mapping[str, np.ndarray], coverage: bytes) -> None:
        self._coverage = coverage
        self._starts = np.asarray(z["coverage_offsets"])
        self._boxes = np.asarray(z["boxes"])  # (y, x, h, w) of the stored ink crop
        self._shapes = np.asarray(z["shapes"])  # (H, W); (0, 0) for JPEG files
        self._modes = [str(m) for m in z["modes"]]
        self._jpeg = z["jpeg"].tobytes()
        self._jpeg_starts = np.asarray(z["jpeg_offsets"])
        self._is_jpeg = np.asarray(z["is_jpeg"])
        self._jpeg_index = np.cumsum(self._is_jpeg) - 1
        self._array_index = np.cumsum(~self._is_jpeg) - 1

    def __len__(self) -> int:
        return len(self._is_jpeg)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        if self._is_jpeg[i]:
            k = self._jpeg_index[i]
            return self._jpeg[self._jpeg_starts[k] : self._jpeg_starts[k + 1]]
        k = self._array_index[i]
        y, x, h, w = (int(v) for v in self._boxes[i])
        cov = np.zeros(tuple(int(v) for v in self._shapes[i]), np.uint8)
        crop = np.frombuffer(self._coverage, np.uint8, h * w, int(self._starts[k])).reshape(h, w)
        cov[y : y + h, x : x + w] = crop
        return export_u8(cov, self._modes[i])


def save_realworld(ds: RealWorldSet, path: Path, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a set to one compact .npz; `load_realworld` gives back the identical images.

    Canvas-style arrays are stored as their ink coverage cropped to the ink (the export mode rebuilds them),
    all crops in one LZMA-compressed stream; JPEG files are stored as their bytes.
    """
    crops, jpegs, boxes, shapes, modes = [], [], [], [], []
    for img, kind in zip(ds.images, ds.kinds, strict=True):
        if isinstance(img, bytes):
            jpegs.append(img)
            boxes.append((0, 0, 0, 0))
            shapes.append((0, 0))
            modes.append("")
            continue
        mode = _mode_of(str(kind))
        cov = np.ascontiguousarray(coverage_u8(img, mode))
        if not np.array_equal(export_u8(cov, mode), img):
            raise ValueError(f"an image of kind {kind!r} is not a plain export of its coverage")
        ys, xs = np.nonzero(cov)
        y, x = (int(ys.min()), int(xs.min())) if ys.size else (0, 0)
        h, w = (int(ys.max()) + 1 - y, int(xs.max()) + 1 - x) if ys.size else (0, 0)
        crops.append(cov[y : y + h, x : x + w].tobytes())
        boxes.append((y, x, h, w))
        shapes.append(cov.shape)
        modes.append(mode)
    info = {"name": ds.name, "format_version": FORMAT_VERSION, **(meta or {})}
    packed = lzma.compress(b"".join(crops), preset=9 | lzma.PRESET_EXTREME)
    arrays = dict(
        coverage_xz=np.frombuffer(packed, np.uint8),
        coverage_offsets=np.cumsum([0] + [len(c) for c in crops]).astype(np.int64),
        boxes=np.array(boxes, np.int32).reshape(-1, 4),
        shapes=np.array(shapes, np.int32).reshape(-1, 2),
        modes=np.array(modes, dtype=str),
        jpeg=np.frombuffer(b"".join(jpegs), np.uint8),
        jpeg_offsets=np.cumsum([0] + [len(j) for j in jpegs]).astype(np.int64),
        is_jpeg=np.array([isinstance(img, bytes) for img in ds.images], bool),
        labels=ds.labels.astype(np.uint8),
        kinds=ds.kinds.astype(str),
        origins=ds.origins.astype(str),
        meta=np.array(json.dumps(info, sort_keys=True)),
        **{f"param_{k}": v.astype(np.float32) for k, v in ds.params.items()},
    )

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file, not a name: np.savez would add ".npz" to the temporary file's name
            np.savez(f, **arrays)

    return atomic_write(path, write)


def load_realworld(name: str | Path, directory: Path | None = None) -> RealWorldSet:
    """Read a set written by `save_realworld` (name: canvas, photo, fonts; or a path to an .npz)."""
    path = Path(name) if str(name).endswith(".npz") else (directory or realworld_dir()) / f"{name}.npz"
    if not path.is_file():
        raise DataError(f"no real-world set at {path} — run `python scripts/make_realworld.py`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            z = {k: npz[k] for k in npz.files}
        info = json.loads(str(z["meta"]))
        images = _StoredImages(z, lzma.decompress(z["coverage_xz"].tobytes()))
        params = {k.removeprefix("param_"): v for k, v in z.items() if k.startswith("param_")}
        return RealWorldSet(info.get("name", path.stem), images, z["labels"].astype(np.int64), z["kinds"],
                            z["origins"], params)  # fmt: skip
    except (OSError, KeyError, ValueError, lzma.LZMAError) as e:
        raise DataError(f"{path}: not a real-world set ({e})") from None
