"""REST API: FastAPI service over the one predictor."""

# Usage and design notes
#
#     digitlab serve runs/fast --workers 2                  # the CLI builds ApiSettings and starts uvicorn
#     DIGITLAB_API_SETTINGS='{"run": "runs/fast"}' uvicorn digitlab.serving.api:app_from_env --factory --workers 2 \
#         --http digitlab.serving.protocol:GuardedHttpToolsProtocol  # the head limits (not the drain: digitlab serve)
#
# * One app per `create_app(settings)`; nothing global. uvicorn needs an import string to start several
#   workers, so `app_from_env` (factory=True) rebuilds the app in each worker from the JSON settings in
#   $DIGITLAB_API_SETTINGS (`ApiSettings.to_env`). Each worker loads the model once and runs a warm-up
#   prediction before it serves: a model that cannot load stops the worker (uvicorn exits 3, the reason in one
#   log line). With `wait_for_model` the worker serves at once instead: /healthz answers, /readyz and the /v1
#   routes answer 503 until the model has loaded, retried every LOAD_RETRY_S seconds.
# * Threading: endpoints are `async def` on purpose. They stream the body in the event loop (so the size limit
#   applies while reading, and a slow upload holds no thread), then run decoding, preprocessing and the model
#   in a worker thread (`anyio.to_thread.run_sync`) bounded by a per-worker CapacityLimiter of
#   `settings.concurrency`: the event loop never runs CPU work, and a burst queues instead of oversubscribing
#   the cores. (Plain `def` endpoints would also run in threads, but could not stream the body under a limit.)
# * Cost: pixels per image and per request are checked on the image headers, and decoding memory per worker
#   is budgeted (digitlab.serving.limits); request heads and their timing are bounded by the HTTP protocol
#   (digitlab.serving.protocol), the body's arrival by BodyLimitMiddleware.
# * Errors: one shape everywhere, {"error": {"code", "message", "request_id"}} (digitlab.serving.errors), never
#   with a file path. Bad input is never a 5xx: 400 undecodable image or refused input, 401 missing/wrong API
#   key, 408 body too slow, 413 body / pixels / files over the limits, 415 unsupported media type, 422
#   malformed JSON / base64 / multipart, 431 request head too big, 503 model not ready; a 500 is a bug.
# * Metrics: one CollectorRegistry per app. With several workers, set PROMETHEUS_MULTIPROC_DIR (the CLI does)
#   and /metrics aggregates all workers through prometheus_client's multiprocess collector.

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitlab import __version__
from digitlab.core.calibration import read_calibration
from digitlab.core.errors import ConfigError, DigitlabError, ImageError, RunDirError
from digitlab.core.rundir import RunDir
from digitlab.data.decode import DEFAULT_PIXEL_LIMIT
from digitlab.serving.errors import (
    ERROR_DOCS,
    REQUEST_ID_HEADER,
    ApiError,
    ErrorResponse,
    InvalidRequest,
    NotReady,
    PixelLimitError,
    TooManyFiles,
    UnsupportedMediaType,
    install_error_handlers,
    one_line,
    public_message,
    redact_paths,
)
from digitlab.serving.limits import BodyLimitMiddleware, DecodeMemory, ImageHead, check_request_pixels, image_head
from digitlab.serving.observability import JsonFormatter, Metrics, ObservabilityMiddleware, log_config
from digitlab.serving.security import check_api_key, key_dependencies

if (
    TYPE_CHECKING
):  # digitlab.inference.predict imports torch: only the workers need it, not uvicorn's supervisor process
    from digitlab.inference.predict import Prediction, Predictor, ReadResult

__all__ = [
    "API_KEY_ENV",
    "SETTINGS_ENV",
    "TTA_ENV",
    "ApiSettings",
    "JsonFormatter",
    "app_from_env",
    "create_app",
    "log_config",
    "tta_setting",
]

SETTINGS_ENV = "DIGITLAB_API_SETTINGS"  # JSON of ApiSettings, read by `app_from_env` in each uvicorn worker
API_KEY_ENV = "DIGITLAB_API_KEY"  # the API key when the settings give none
TTA_ENV = "DIGITLAB_TTA"  # test-time augmentation when the settings do not say: on/off (1/0, true/false) or "run"
MiB = 1024 * 1024
LOAD_RETRY_S = 5.0  # with wait_for_model: seconds between attempts to load a model that failed to load

# Declared media types of images we decode (the decoder sniffs the bytes anyway; these only guard the door).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif", "image/tiff")
IMAGE_TYPE_ALIASES = {"image/jpg", "image/pjpeg", "image/mpo", "image/x-bmp", "image/x-ms-bmp", "image/x-tiff"}
RAW_TYPES = (*IMAGE_TYPES, "application/octet-stream")
DOCS_ASSETS = "/docs-assets"  # Swagger UI and ReDoc, served from the fastapi-offline package (no CDN)

log = logging.getLogger("digitlab.api")
T = TypeVar("T")


# --------------------------------------------------------------------------------------------- settings


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


# --------------------------------------------------------------------------------------------- models


Probability = Field(ge=0.0, le=1.0)


class PredictionOut(BaseModel):
    """One image's answer."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"digit": 7, "confidence": 0.993, "status": "ok", "message": None,
                                         "probabilities": [0.0, 0.0, 0.001, 0.002, 0.0, 0.0, 0.0, 0.993, 0.001, 0.003],
                                         "model": "fast"}]}
    )  # fmt: skip
    digit: int | None = Field(ge=0, le=9, description="The digit; null unless status is 'ok'.")
    confidence: float = Field(ge=0.0, le=1.0, description="Calibrated probability of `digit` (0 when null).")
    probabilities: list[float] = Field(
        max_length=10, description="The 10 calibrated class probabilities (digits 0-9) of the framed image, "
        "refused ones included (status 'ok', 'empty' or 'not_a_digit')."
    )  # fmt: skip
    status: Literal["ok", "empty", "not_a_digit"] = Field(
        description="'ok'; 'empty' (no digit-like ink); 'not_a_digit' (rejected by the run's out-of-distribution rule)."
    )
    message: str | None = Field(description="Why status is not 'ok', in one line.")
    model: str = Field(description="Run id of the model that answered.")


class BatchItemError(BaseModel):
    code: str = Field(description="invalid_image, too_many_pixels or unsupported_media_type.")
    message: str


class BatchItem(BaseModel):
    """One file's answer in a batch, in request order; a bad file gets status 'error' here, not a failed request."""

    index: int = Field(ge=0, description="Position of the file in the request.")
    filename: str | None = Field(description="The part's filename, as sent.")
    digit: int | None = Field(ge=0, le=9)
    confidence: float = Field(ge=0.0, le=1.0)
    probabilities: list[float] = Field(max_length=10)
    status: Literal["ok", "empty", "not_a_digit", "error"]
    message: str | None
    error: BatchItemError | None = Field(description="Set when status is 'error'.")


class BatchOut(BaseModel):
    model: str
    count: int = Field(ge=0)
    results: list[BatchItem]


class ReadDigitOut(BaseModel):
    box: list[int] = Field(min_length=4, max_length=4, description="(x0, y0, x1, y1) in source pixels.")
    digit: int | None = Field(ge=0, le=9)
    confidence: float = Field(ge=0.0, le=1.0)
    probabilities: list[float] = Field(max_length=10)
    status: Literal["ok", "empty", "not_a_digit"]
    message: str | None


class ReadOut(BaseModel):
    """A number written on one line, read left to right."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "42", "status": "ok", "message": None, "model": "fast", "digits": [
            {"box": [10, 8, 52, 70], "digit": 4, "confidence": 0.98, "status": "ok", "message": None,
             "probabilities": [0.0, 0.0, 0.0, 0.0, 0.98, 0.0, 0.0, 0.01, 0.0, 0.01]},
            {"box": [60, 9, 101, 71], "digit": 2, "confidence": 0.99, "status": "ok", "message": None,
             "probabilities": [0.0, 0.0, 0.99, 0.0, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0]}]}]}
    )  # fmt: skip
    text: str = Field(description="One character per digit, '?' where a mark is not a digit.")
    status: Literal["ok", "empty"]
    message: str | None
    digits: list[ReadDigitOut]
    model: str


class OodOut(BaseModel):
    score: str = Field(description="Score the 'not a digit' rule thresholds (energy or max_logit).")
    threshold: float
    temperature: float
    ink_max: float | None = Field(description="Bright-ink share above which an image is 'not a digit'.")


class CalibrationOut(BaseModel):
    temperature: float = Field(gt=0, description="Softmax temperature fitted on the validation split.")
    ece: float | None = Field(description="Validation expected calibration error after scaling.")
    nll: float | None = Field(description="Validation negative log-likelihood after scaling.")
    fitted_on: str | None
    ood: OodOut | None = Field(description="The 'not a digit' rule (null: none fitted).")


class ModelOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"run": "fast", "preset": "fast", "architecture": "fast", "params": 160842,
                                         "test_accuracy": 0.9962, "backend": "onnx", "tta": False, "device": "cpu",
                                         "calibration": {"temperature": 1.21, "ece": 0.004, "nll": 0.012,
                                                         "fitted_on": "validation split", "ood": None}}]}
    )  # fmt: skip
    run: str
    preset: str | None
    architecture: str | None
    params: int | None
    test_accuracy: float | None
    backend: str
    tta: bool = Field(description="Predictions average 5 shifted copies (test-time augmentation).")
    device: str
    calibration: CalibrationOut


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    model: str
    backend: str


class ImageJson(BaseModel):
    """An image as base64 in JSON (a `data:` URL, as a browser canvas gives, is accepted too)."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(
        min_length=1,
        description="Base64 of a PNG, JPEG, WebP, BMP, GIF or TIFF file (or a data:image/...;base64, URL).",
        json_schema_extra={"contentEncoding": "base64"},
    )


# --------------------------------------------------------------------------------------------- service


@lru_cache(maxsize=1)
def example_png() -> bytes:
    """A small canvas with a drawn 1: the warm-up input and the OpenAPI example."""
    from PIL import ImageDraw

    im = Image.new("L", (112, 112), 255)
    draw = ImageDraw.Draw(im)
    draw.line((56, 18, 56, 94), fill=0, width=8)
    draw.line((40, 34, 56, 18), fill=0, width=8)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def _model_out(predictor: Predictor, run: Path) -> ModelOut:
    info = predictor.info
    try:
        cal = read_calibration(run)
    except DigitlabError:
        cal = {}

    def num(x: Any) -> float | None:
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None

    ood = info.get("ood")
    return ModelOut(
        run=str(info.get("run")), preset=info.get("preset"), architecture=info.get("model"),
        params=info.get("params") if isinstance(info.get("params"), int) else None,
        test_accuracy=num(info.get("test_accuracy")), backend=str(info["backend"]), tta=bool(info.get("tta")),
        device=str(info.get("device")),
        calibration=CalibrationOut(temperature=float(info["temperature"]), ece=num(cal.get("ece_after")),
                                   nll=num(cal.get("nll_after")),
                                   fitted_on=cal.get("fitted_on") if isinstance(cal.get("fitted_on"), str) else None,
                                   ood=OodOut(**ood) if isinstance(ood, dict) else None),
    )  # fmt: skip


class ModelLoadError(RunDirError):
    """The model could not be loaded (or failed its warm-up prediction)."""


class Service:
    """One worker's predictor, loaded once (before serving, or in the background with wait_for_model) and ready
    once a warm-up prediction has run; and the worker's bounds on running predictions."""

    def __init__(self, settings: ApiSettings, load: Callable[[], Predictor], metrics: Metrics) -> None:
        self.settings = settings
        self._load_predictor = load
        self.metrics = metrics
        self.predictor: Predictor | None = None
        self.model: ModelOut | None = None
        self.error: str | None = None  # why the model is not loaded, as clients may read it (no paths)
        self.memory = DecodeMemory(settings.decode_memory_mb * MiB)
        self._limiter: anyio.CapacityLimiter | None = None

    async def start(self) -> None:
        """Load the model and warm it up; ModelLoadError (one line) when that fails."""
        started = time.perf_counter()
        try:
            predictor, model = await anyio.to_thread.run_sync(self._load)
        except Exception as e:
            self.error = public_message(e)
            log.error("model failed to load: %s", one_line(e))  # the log keeps the paths: it is the operator's
            raise ModelLoadError(self.error) from None
        self.predictor, self.model, self.error = predictor, model, None
        self.metrics.model_info.labels(model.run, model.backend, str(model.preset)).set(1)
        fields = {"run": model.run, "backend": model.backend, "seconds": round(time.perf_counter() - started, 3)}
        log.info("model ready", extra={"fields": fields})

    async def keep_loading(self) -> None:
        """`start` until the model loads, every LOAD_RETRY_S seconds (wait_for_model)."""
        while True:
            try:
                await self.start()
                return
            except ModelLoadError:
                await anyio.sleep(LOAD_RETRY_S)

    def _load(self) -> tuple[Predictor, ModelOut]:
        predictor = self._load_predictor()
        [warm] = predictor.predict(example_png())
        if warm.status == "error":
            raise ModelLoadError(f"warm-up prediction failed: {warm.message}")
        return predictor, _model_out(predictor, self.settings.run)

    def require(self) -> tuple[Predictor, ModelOut]:
        if self.predictor is None or self.model is None:
            why = f"model failed to load: {self.error} (retrying)" if self.error else "model is loading"
            raise NotReady(why, {"Retry-After": "1"})
        return self.predictor, self.model

    async def run(self, endpoint: str, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker thread, at most `concurrency` at once; its time goes to the inference histogram."""

        def timed() -> T:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.metrics.inference.labels(endpoint).observe(time.perf_counter() - start)

        if self._limiter is None:  # made here, in the event loop: anyio's limiter belongs to a running loop
            self._limiter = anyio.CapacityLimiter(self.settings.concurrency)
        return await anyio.to_thread.run_sync(timed, limiter=self._limiter)

    def decode(self, predict: Callable[[Any], T], heads: Sequence[ImageHead]) -> T:
        """`predict` of the images behind `heads` within the request's pixel limit and the decoding memory."""
        check_request_pixels(heads, self.settings.request_pixel_limit)
        with self.memory.hold(max((h.peak_bytes for h in heads), default=0)):  # decoded one after the other
            return predict([h.source for h in heads])


class OneLineStartupError:
    """Lifespan: a model that fails to load is reported once, in one line, by Service.start (Starlette would
    send uvicorn the whole traceback to log)."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def quiet(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.service.error is not None:
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, quiet)


# --------------------------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Upload:
    """A request's image before decoding: raw bytes, or a JSON body still to parse (in the worker thread)."""

    data: bytes
    is_json: bool = False
    filename: str | None = None
    content_type: str | None = None


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _check_image_type(media_type: str) -> None:
    """415 for a declared image type we do not decode (SVG, HEIC, ...); non-image types are sniffed instead."""
    if media_type.startswith("image/") and media_type not in IMAGE_TYPES and media_type not in IMAGE_TYPE_ALIASES:
        raise UnsupportedMediaType(f"{media_type} is not supported (send PNG, JPEG, WebP, BMP, GIF or TIFF)")


def _image_from_json(body: bytes) -> bytes:
    try:
        obj = json.loads(body)
    except RecursionError:  # [[[[...]]]]: nested deeper than the parser goes
        raise InvalidRequest("body is not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise InvalidRequest(f"body is not valid JSON ({one_line(e)})") from None
    try:
        text = ImageJson.model_validate(obj).image
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise InvalidRequest(f'expected {{"image": "<base64>"}}: {where}') from None
    return image_from_text(text)


def image_from_text(text: str) -> bytes:
    """The bytes of a JSON body's image: base64 (standard or URL-safe alphabet) or a data: URL."""
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidRequest("a data: URL must be base64 (data:image/png;base64,...)")
        _check_image_type(_media_type(header[5:]))
    text = "".join(text.split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if "-" in text or "_" in text else None,
                                validate=True)  # fmt: skip
    except (binascii.Error, ValueError):
        raise InvalidRequest("'image' is not valid base64") from None


def _image_data(upload: Upload) -> bytes:
    return _image_from_json(upload.data) if upload.is_json else upload.data


async def _parse_multipart(request: Request, max_files: int, too_many: Callable[[], ApiError]) -> list[UploadFile]:
    parser = MultiPartParser(request.headers, request.stream(), max_files=max_files, max_fields=32,
                             max_part_size=64 * 1024)  # fmt: skip
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many files"):
            raise too_many() from None
        raise InvalidRequest(f"malformed multipart body: {e.message}") from None
    return [v for _, v in form.multi_items() if isinstance(v, UploadFile)]


async def _read_files(files: list[UploadFile]) -> list[Upload]:
    try:
        return [Upload(await f.read(), filename=f.filename, content_type=_media_type(f.content_type)) for f in files]
    finally:
        for f in files:
            await f.close()


async def _read_image(request: Request) -> Upload:
    """The one image of /v1/predict and /v1/read: multipart field `file`, a JSON body or a raw image body."""
    media_type = _media_type(request.headers.get("content-type"))
    if media_type == "multipart/form-data":
        files = await _parse_multipart(
            request, 1, lambda: InvalidRequest("send one file (use /v1/predict/batch for several)")
        )
        uploads = await _read_files(files)
        if not uploads:
            raise InvalidRequest("no file in the multipart body: send the image as the file field 'file'")
        _check_image_type(uploads[0].content_type or "")
        return uploads[0]
    if media_type == "application/json":
        return Upload(await request.body(), is_json=True)
    if media_type in RAW_TYPES or media_type in IMAGE_TYPE_ALIASES:
        return Upload(await request.body(), content_type=media_type)
    _check_image_type(media_type)
    shown = media_type or "no Content-Type"
    raise UnsupportedMediaType(f"{shown}: send multipart/form-data, application/json or an image/* body")


# --------------------------------------------------------------------------------------------- handlers


def _prediction_out(p: Prediction, model: str) -> PredictionOut:
    return PredictionOut(digit=p.digit, confidence=p.confidence, probabilities=p.probabilities, status=p.status,
                         message=p.message, model=model)  # type: ignore[arg-type]  # fmt: skip


def _predict_one(service: Service, predictor: Predictor, upload: Upload) -> Prediction:
    head = image_head(_image_data(upload), service.settings.pixel_limit)
    [p] = service.decode(predictor.predict, [head])
    if p.status == "error":
        raise ImageError(p.message or "cannot decode image")
    return p


def _read_one(service: Service, predictor: Predictor, upload: Upload) -> ReadResult:
    # Never reduced: the boxes it gives are in the source's own pixels.
    head = image_head(_image_data(upload), service.settings.pixel_limit, reduce=False)
    result = service.decode(lambda sources: predictor.read(sources[0]), [head])
    if result.status == "error":
        raise ImageError(result.message or "cannot decode image")
    return result


def _item_error(e: Exception) -> BatchItemError:
    if isinstance(e, PixelLimitError):
        return BatchItemError(code="too_many_pixels", message=public_message(e))
    if isinstance(e, ApiError):
        return BatchItemError(code=e.code, message=redact_paths(e.message))
    return BatchItemError(code="invalid_image", message=public_message(e))


def _predict_batch(service: Service, predictor: Predictor, uploads: list[Upload]) -> list[tuple[BatchItem, Prediction]]:
    """One batched forward pass over the files that pass the checks; each other file gets its error in place. The
    pixels of the files that pass count against the request's limit together (over it: the request is refused)."""
    from digitlab.inference.predict import Prediction

    errors: dict[int, BatchItemError] = {}
    heads: dict[int, ImageHead] = {}
    for i, up in enumerate(uploads):
        try:
            _check_image_type(up.content_type or "")
            heads[i] = image_head(up.data, service.settings.pixel_limit)
        except (ApiError, DigitlabError) as e:
            errors[i] = _item_error(e)
    preds = dict(zip(heads, service.decode(predictor.predict, list(heads.values())), strict=True))
    out = []
    for i, up in enumerate(uploads):
        p = preds.get(i)
        if p is not None and p.status == "error":
            errors[i] = BatchItemError(code="invalid_image", message=public_message(Exception(p.message)))
        if p is None or i in errors:  # every file has a prediction or an error
            p = Prediction(None, [], 0.0, "error", errors[i].message)
        item = BatchItem(index=i, filename=up.filename, digit=p.digit, confidence=p.confidence,
                         probabilities=p.probabilities, status=p.status,  # type: ignore[arg-type]
                         message=p.message, error=errors.get(i))  # fmt: skip
        out.append((item, p))
    return out


def _binary(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


def _image_body(example_b64: str) -> dict[str, Any]:
    """OpenAPI requestBody of /v1/predict and /v1/read: three ways to send one image."""
    json_schema = ImageJson.model_json_schema()
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["file"],
                       "properties": {"file": _binary("The image file (PNG, JPEG, WebP, BMP, GIF or TIFF).")}},
            "encoding": {"file": {"contentType": ", ".join(IMAGE_TYPES)}},
        },
        "application/json": {"schema": json_schema, "example": {"image": example_b64}},
        **{t: {"schema": _binary("The image file itself.")} for t in RAW_TYPES},
    }  # fmt: skip
    return {"requestBody": {"required": True, "content": content}}


def _batch_body(max_batch: int) -> dict[str, Any]:
    files = {"type": "array", "items": _binary("One image file."), "minItems": 1, "maxItems": max_batch,
             "description": f"Up to {max_batch} image files, each as a part named 'files'."}  # fmt: skip
    schema = {"type": "object", "required": ["files"], "properties": {"files": files}}
    content = {"multipart/form-data": {"schema": schema,
                                       "encoding": {"files": {"contentType": ", ".join(IMAGE_TYPES)}}}}  # fmt: skip
    return {"requestBody": {"required": True, "content": content}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorResponse, "description": ERROR_DOCS[s]} for s in statuses}


# --------------------------------------------------------------------------------------------- the app


def create_app(settings: ApiSettings, *, load: Callable[[], Predictor] | None = None) -> FastAPI:
    """The service for `settings`. `load` builds the predictor (default: `Predictor.from_run` with the settings'
    run, backend, threads and tta); it runs once, in a worker thread, at startup (in the background with
    `wait_for_model`)."""

    def default_load() -> Predictor:
        from digitlab.inference.predict import Predictor

        return Predictor.from_run(settings.run, backend=settings.resolved_backend, threads=settings.threads,
                                  tta=settings.tta)  # fmt: skip

    metrics = Metrics(CollectorRegistry(auto_describe=True))
    service = Service(settings, load or default_load, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        task = None
        if settings.wait_for_model:
            task = asyncio.create_task(service.keep_loading())
        else:
            await service.start()  # a model that cannot load stops the worker before it serves
        try:
            yield
        finally:
            if task is not None and not task.done():
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())

    app = FastAPI(
        title="digitlab",
        version=__version__,
        summary="Handwritten digit recognition: one image, a batch, or a number written on one line.",
        description="Every answer carries calibrated probabilities and a status ('ok', 'empty', 'not_a_digit'). "
        'Errors have one shape: `{"error": {"code", "message", "request_id"}}`.',
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.settings = settings
    install_error_handlers(app)
    _offline_docs(app)

    auth = key_dependencies(None if settings.no_auth else settings.api_key)
    v1_errors = (401, 503) if auth else (503,)
    image_errors = _errors(400, *v1_errors, 408, 413, 415, 422)
    example = base64.b64encode(example_png()).decode()

    async def _single(request: Request) -> tuple[Predictor, ModelOut, Upload]:
        predictor, model = service.require()
        return predictor, model, await _read_image(request)

    @app.post("/v1/predict", response_model=PredictionOut, responses=image_errors, dependencies=auth, tags=["v1"],
              openapi_extra=_image_body(example), summary="Recognize the digit in one image")  # fmt: skip
    async def predict(request: Request) -> PredictionOut:
        """One image as the multipart file field `file`, as JSON `{"image": "<base64>"}`, or as the raw body
        (Content-Type image/png, image/jpeg, ...)."""
        predictor, model, upload = await _single(request)
        p = await service.run("predict", _predict_one, service, predictor, upload)
        metrics.count("predict", [p])
        return _prediction_out(p, model.run)

    @app.post("/v1/predict/batch", response_model=BatchOut, responses=_errors(*v1_errors, 408, 413, 415, 422),
              dependencies=auth, tags=["v1"], openapi_extra=_batch_body(settings.max_batch),
              summary="Recognize the digit in each of several images")  # fmt: skip
    async def predict_batch(request: Request) -> BatchOut:
        """Up to `max_batch` files as multipart parts named `files`; one result per file, in order. A file that
        cannot be decoded gets status 'error' with its code in place; the request itself succeeds unless the
        files hold more pixels together than `request_pixel_limit` (413)."""
        predictor, model = service.require()
        media_type = _media_type(request.headers.get("content-type"))
        if media_type != "multipart/form-data":
            raise UnsupportedMediaType(f"{media_type or 'no Content-Type'}: send the files as multipart/form-data")
        limit = settings.max_batch
        files = await _parse_multipart(request, limit, lambda: TooManyFiles(f"more than {limit} files in one batch"))
        uploads = await _read_files(files)
        if not uploads:
            raise InvalidRequest("no files in the multipart body: send each image as a file field named 'files'")
        metrics.batch_size.observe(len(uploads))
        rows = await service.run("batch", _predict_batch, service, predictor, uploads)
        metrics.count("batch", [p for _, p in rows])
        return BatchOut(model=model.run, count=len(rows), results=[item for item, _ in rows])

    @app.post("/v1/read", response_model=ReadOut, responses=image_errors, dependencies=auth, tags=["v1"],
              openapi_extra=_image_body(example), summary="Read a number written on one line")  # fmt: skip
    async def read(request: Request) -> ReadOut:
        """The image is sent as for /v1/predict; the digits come back left to right, each with its box."""
        predictor, model, upload = await _single(request)
        result = await service.run("read", _read_one, service, predictor, upload)
        metrics.count("read", [d.prediction for d in result.digits])
        digits = [ReadDigitOut(box=list(d.box), digit=d.digit, confidence=d.confidence,
                               probabilities=d.prediction.probabilities, status=d.status,  # type: ignore[arg-type]
                               message=d.prediction.message) for d in result.digits]  # fmt: skip
        return ReadOut(text=result.text, status=result.status, message=result.message, digits=digits,  # type: ignore[arg-type]
                       model=model.run)  # fmt: skip

    @app.get("/v1/model", response_model=ModelOut, responses=_errors(*v1_errors), dependencies=auth, tags=["v1"],
             summary="The served model: run, preset, size, accuracy, calibration, backend")  # fmt: skip
    async def model_info() -> ModelOut:
        return service.require()[1]

    @app.get("/healthz", response_model=HealthOut, tags=["ops"], summary="The process is alive")
    async def healthz() -> HealthOut:
        return HealthOut(status="ok")

    @app.get("/readyz", response_model=ReadyOut, responses=_errors(503), tags=["ops"],
             summary="200 once the model is loaded and warmed up, 503 before")  # fmt: skip
    async def readyz() -> ReadyOut:
        _, model = service.require()
        return ReadyOut(status="ready", model=model.run, backend=model.backend)

    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):  # HEAD too: what load balancers send
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)

    metrics_auth = [] if settings.public_metrics else auth

    @app.get("/metrics", response_class=Response, tags=["ops"], summary="Prometheus metrics",
             dependencies=metrics_auth, responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format."},
                        **(_errors(401) if metrics_auth else {})})  # fmt: skip
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    if settings.feedback_db is not None:
        from digitlab.serving.feedback import add_feedback_routes

        add_feedback_routes(app, service, auth, settings.feedback_db)

    # Outermost first: request id / metrics / access log, then CORS (so errors carry its headers), then the
    # body limit (so nothing reads past it).
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Content-Type", "Authorization", "X-API-Key", REQUEST_ID_HEADER],
                           expose_headers=[REQUEST_ID_HEADER], max_age=600)  # fmt: skip
    routes = frozenset(getattr(r, "path", "") for r in app.routes)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, routes=routes)
    app.add_middleware(OneLineStartupError, service=service)
    return app


def _offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts and styles served here: they work offline."""
    from importlib.resources import files

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")
    title = f"{app.title} API"

    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=title, oauth2_redirect_url=None,
                                   swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})  # (no online validator)  # fmt: skip

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=title, with_google_fonts=False,
                              redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png")  # fmt: skip

    app.add_api_route("/docs", swagger, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)


def app_from_env() -> FastAPI:
    """uvicorn factory (`uvicorn digitlab.serving.api:app_from_env --factory`): the app for $DIGITLAB_API_SETTINGS."""
    return create_app(ApiSettings.from_env())
