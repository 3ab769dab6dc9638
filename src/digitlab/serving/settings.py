"""The API's settings: one typed object per service instance, carried into uvicorn's workers as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from digitlab.core.errors import ConfigError, RunDirError
from digitlab.core.rundir import RunDir
from digitlab.data.decode import DEFAULT_PIXEL_LIMIT
from digitlab.serving.errors import one_line
from digitlab.serving.security import check_api_key

__all__ = ["API_KEY_ENV", "SETTINGS_ENV", "TTA_ENV", "ApiSettings", "tta_setting"]

SETTINGS_ENV = "DIGITLAB_API_SETTINGS"  # JSON of ApiSettings, read by `app_from_env` in each uvicorn worker
API_KEY_ENV = "DIGITLAB_API_KEY"  # the API key when the settings give none
TTA_ENV = "DIGITLAB_TTA"  # test-time augmentation when the settings do not say: on/off (1/0, true/false) or "run"
MiB = 1024 * 1024


class ApiSettings(BaseModel):
    """Everything one service instance needs; `to_env` / `from_env` carry it into uvicorn's workers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run: Path = Field(description="Run directory to serve.")
    backend: Literal["torch", "onnx", "onnx-int8"] | None = Field(
        None, description="None: onnx when the run has model.onnx, else torch."
    )
    max_body_bytes: int = Field(10 * MiB, ge=1, description="Largest request body, enforced while reading it.")
    max_batch: int = Field(64, ge=1, le=1024, description="Most files in one /v1/predict/batch request.")
    api_key: str | None = Field(None, repr=False, description="Require this key on /v1 routes (and /metrics).")
    no_auth: bool = Field(False, description="Serve without a key on purpose, even with $DIGITLAB_API_KEY empty.")
    public_metrics: bool = Field(False, description="/metrics answers without the API key.")
    cors_origins: tuple[str, ...] = Field((), description="Origins allowed by CORS ('*' for any); none: no CORS.")
    pixel_limit: int = Field(
        DEFAULT_PIXEL_LIMIT, ge=1, le=DEFAULT_PIXEL_LIMIT, description="Most pixels per image, checked on the header."
    )
    request_pixel_limit: int = Field(
        DEFAULT_PIXEL_LIMIT, ge=1, description="Most pixels the images of one request decode to together (headers)."
    )
    decode_memory_mb: int = Field(
        512, ge=16, description="Estimated decoding memory per worker in use at once (MiB); bigger images queue."
    )
    body_timeout: float = Field(60.0, gt=0, description="Seconds a request body may take to arrive (408 after).")
    wait_for_model: bool = Field(
        False, description="Serve before the model has loaded (503 until then, retrying) instead of failing at start."
    )
    threads: int | None = Field(1, ge=1, description="Intra-op threads per model call (None: the library's choice).")
    concurrency: int = Field(4, ge=1, description="Predictions running at once per worker; more requests queue.")
    tta: bool | None = Field(
        False,
        description="Test-time augmentation (5 forward passes per image); None: as the run's config. Off by "
        "default: the bundled model gains nothing measurable from it (docs/serving.md).",
    )
    feedback_db: str | None = Field(None, repr=False, description="Feedback store URL; None: no /v1/feedback routes.")

    @field_validator("api_key")
    @classmethod
    def _sendable_key(cls, v: str | None) -> str | None:
        return None if v is None else check_api_key(v)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: Any) -> Any:
        return tuple(o.strip() for o in v.split(",") if o.strip()) if isinstance(v, str) else v

    @property
    def resolved_backend(self) -> str:
        if self.backend is not None:
            return self.backend
        return "onnx" if RunDir(self.run).model_file("onnx").is_file() else "torch"

    def backend_reason(self) -> str:
        """Which backend answers and why, in words (what `digitlab serve` says as it starts)."""
        if self.backend is not None:
            return f"{self.backend} backend, as asked"
        if self.resolved_backend == "onnx":
            return "onnx backend: the run has model.onnx"
        return f"torch backend: the run has no model.onnx (`digitlab export {self.run}` writes it)"

    def check(self) -> None:
        """Raise RunDirError when the run or its model file for the backend is missing (fail before serving)."""
        if not self.run.is_dir():
            raise RunDirError(f"no run directory at {self.run}")
        backend = self.resolved_backend
        needed = RunDir(self.run).model_file(backend)
        if not needed.is_file():
            flag = " --int8" if backend == "onnx-int8" else ""
            hint = "train it first" if backend == "torch" else f"run `digitlab export {self.run}{flag}` first"
            raise RunDirError(f"{self.run}: no {needed.relative_to(self.run)} for backend {backend} — {hint}")

    def to_env(self) -> str:
        """JSON for $DIGITLAB_API_SETTINGS (the API key included: the environment is the worker's only input)."""
        return self.model_dump_json()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ApiSettings:
        env = os.environ if environ is None else environ
        raw = env.get(SETTINGS_ENV)
        if not raw:
            raise RunDirError(f'${SETTINGS_ENV} is not set: give it the settings as JSON, e.g. {{"run": "runs/fast"}}')
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise ConfigError(f"${SETTINGS_ENV} is not valid JSON ({one_line(e)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"${SETTINGS_ENV} must be a JSON object")
        if data.get("api_key") is None and API_KEY_ENV in env and not data.get("no_auth"):
            data["api_key"] = check_api_key(env[API_KEY_ENV], f"${API_KEY_ENV}")  # set but empty: refused
        if "tta" not in data and env.get(TTA_ENV):
            data["tta"] = tta_setting(env[TTA_ENV])
        return cls.model_validate(data)


def tta_setting(value: str) -> bool | None:
    """The `tta` setting from $DIGITLAB_TTA: on/off as 1/0, true/false, yes/no, on/off; "run" (the run's config)
    is None."""
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    if v == "run":
        return None
    raise ConfigError(f"${TTA_ENV} must be on or off (1/0, true/false, yes/no) or 'run', not {value!r}")
