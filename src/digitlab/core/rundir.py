"""The run directory: the contract between training and everything after it (layout in docs/run-directory.md)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitlab.core.atomic import atomic_write_bytes
from digitlab.core.config import TrainConfig
from digitlab.core.errors import RunDirError
from digitlab.core.jsonfile import read_json_object, write_json

# The file each serving backend loads from a run; the ONNX files come from `digitlab export` (or training).
MODEL_FILES = {"torch": "checkpoint/best.pt", "onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}

if TYPE_CHECKING:  # torch is imported where weights are saved or loaded: reading a run's files needs none of it
    import torch
    from torch import nn


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory. Creating the object touches nothing on disk."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoint"

    @property
    def best(self) -> Path:
        return self.root / MODEL_FILES["torch"]

    @property
    def last(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration.json"

    def model_file(self, backend: str) -> Path:
        """The file `backend` (torch, onnx, onnx-int8) loads: checkpoint/best.pt, model.onnx, model.int8.onnx."""
        return self.root / MODEL_FILES[backend]

    def plot(self, name: str) -> Path:
        """`curves`, `confusion`, `errors`, `reliability` -> plots/<name>.png"""
        return self.plots / f"{name}.png"

    def require(self) -> RunDir:
        """Raise a one-line RunDirError unless this looks like a finished run."""
        if not self.root.is_dir():
            raise RunDirError(f"no run directory at {self.root} — run `digitlab train --out {self.root}` first")
        if not self.best.exists():
            raise RunDirError(f"no checkpoint in {self.root} (expected {self.best}) — run `digitlab train` first")
        return self

    def read_config(self) -> TrainConfig:
        """config.json, every field type-checked (a broken file is a one-line error)."""
        if not self.config.exists():
            raise RunDirError(f"{self.root}: missing config.json")
        return TrainConfig.load(self.config)

    def read_metrics(self, required: bool = True) -> dict[str, Any]:
        """metrics.json (a broken file is a one-line error); missing: an error, or {} when not `required`."""
        if not self.metrics.exists():
            if not required:
                return {}
            raise RunDirError(f"{self.root}: missing metrics.json — run `digitlab evaluate {self.root}`")
        return read_json_object(self.metrics)

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        """Write JSON atomically, so a crash never leaves a half-written file behind."""
        write_json(path, data)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically (a kill or a full disk mid-write leaves the previous file whole)."""
    import io

    import torch

    buf = io.BytesIO()  # serialised in memory, so that every byte reaches the disk through one atomic write
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getbuffer())


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely: `weights_only=True` never runs code from the file, whoever wrote it."""
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before refusing them: the error says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise RunDirError(f"no checkpoint at {path}") from None
    except Exception as e:  # corrupt, truncated, or a pickle that asks for code: report it in one line
        first = " ".join(str(e).split())[:160]
        raise RunDirError(f"cannot load checkpoint {path}: not a safe digitlab checkpoint (truncated, corrupt, or "
                          f"not written by digitlab: {first})") from None  # fmt: skip
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model" not in ckpt:
        raise RunDirError(f"cannot load checkpoint {path}: not a digitlab checkpoint")
    return ckpt


def save_weights(path: Path, model: nn.Module, config: TrainConfig, **extra: Any) -> None:
    """A self-describing checkpoint: the model's name and arguments travel with its weights."""
    save_checkpoint(path, {"model": config.model, "model_args": config.model_args, "state_dict": model.state_dict(),
                           "config": json.loads(config.to_json()), **extra})  # fmt: skip


BUNDLED = Path(__file__).resolve().parents[1] / "pretrained" / "default"  # the model shipped in the package


def default_run() -> Path:
    """The run used when none is given: the model bundled with the package (BUNDLED)."""
    if BUNDLED.is_dir():
        return BUNDLED
    raise RunDirError("no run given and no bundled model: give a run directory first (see `digitlab train`)")
