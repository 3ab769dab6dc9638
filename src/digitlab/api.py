"""REST API: FastAPI service over the one predictor."""

# Usage and design notes
#
#     digitlab serve runs/fast --workers 2                  # the CLI builds ApiSettings and starts uvicorn
#     DIGITLAB_API_SETTINGS='{"run": "runs/fast"}' uvicorn digitlab.api:app_from_env --factory --workers 2
#
# * One app per `create_app(settings)`; nothing global. uvicorn needs an import string to start several
#   workers, so `app_from_env` (factory=True) rebuilds the app in each worker from the JSON settings in
#   $DIGITLAB_API_SETTINGS (`ApiSettings.to_env`). Each worker loads the model once, in the background: /healthz
#   answers at once, /readyz and the /v1 routes answer 503 until the model is loaded and a warm-up prediction
#   has run.
# * Threading: endpoints are `async def` on purpose. They stream the body in the event loop (so the size limit
#   applies while reading, and a slow upload holds no thread), then run decoding, preprocessing and the model
#   in a worker thread (`anyio.to_thread.run_sync`) bounded by a per-worker CapacityLimiter of
#   `settings.concurrency`: the event loop never runs CPU work, and a burst queues instead of oversubscribing
#   the cores. (Plain `def` endpoints would also run in threads, but could not stream the body under a limit.)
# * Errors: one shape everywhere, {"error": {"code", "message", "request_id"}}; each exception type is mapped
#   to its status and code once, by its own handler. Bad input is never a 5xx: 400 undecodable image, 401
#   missing/wrong API key, 413 body / pixels / files over the limits, 415 unsupported media type, 422
#   malformed JSON / base64 / multipart, 503 model not ready; a 500 (internal_error, model_error) is a bug.
# * Metrics: one CollectorRegistry per app. With several workers, set PROMETHEUS_MULTIPROC_DIR (the CLI does)
#   and /metrics aggregates all workers through prometheus_client's multiprocess collector.

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import Headers, MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitlab import __version__
from digitlab.errors import ConfigError, DigitlabError, ImageError, RunDirError
from digitlab.preprocess import DEFAULT_PIXEL_LIMIT, FORMATS

if TYPE_CHECKING:  # digitlab.predict imports torch: only the workers need it, not uvicorn's supervisor process
    from digitlab.predict import Prediction, Predictor, ReadResult

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
REQUEST_ID_HEADER = "X-Request-ID"
MiB = 1024 * 1024
# The file each backend loads, as in digitlab.predict (checked by the tests; not imported, see above).
MODEL_FILES = {"torch": "checkpoint/best.pt", "onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}

# Declared media types of images we decode (the decoder sniffs the bytes anyway; these only guard the door).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif", "image/tiff")
IMAGE_TYPE_ALIASES = {"image/jpg", "image/pjpeg", "image/mpo", "image/x-bmp", "image/x-ms-bmp", "image/x-tiff"}
RAW_TYPES = (*IMAGE_TYPES, "application/octet-stream")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Security schemes (stateless; module level so that FastAPI can resolve the endpoint annotations that name them)
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="The service's API key.")
BEARER = HTTPBearer(auto_error=False, description="The API key as a bearer token.")

log = logging.getLogger("digitlab.api")
access_log = logging.getLogger("digitlab.access")
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
    api_key: str | None = Field(None, min_length=1, repr=False, description="Require this key on /v1 routes.")
    cors_origins: tuple[str, ...] = Field((), description="Origins allowed by CORS ('*' for any); none: no CORS.")
    pixel_limit: int = Field(
        DEFAULT_PIXEL_LIMIT, ge=1, le=DEFAULT_PIXEL_LIMIT, description="Most pixels per image, checked on the header."
    )
    threads: int | None = Field(1, ge=1, description="Intra-op threads per model call (None: the library's choice).")
    concurrency: int = Field(4, ge=1, description="Predictions running at once per worker; more requests queue.")
    tta: bool | None = Field(
        False,
        description="Test-time augmentation (5 forward passes per image); None: as the run's config. Off by "
        "default: the bundled model gains nothing measurable from it (digitlab.predict.TTA_EFFECT).",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: Any) -> Any:
        return tuple(o.strip() for o in v.split(",") if o.strip()) if isinstance(v, str) else v

    @property
    def resolved_backend(self) -> str:
        if self.backend is not None:
            return self.backend
        return "onnx" if (self.run / MODEL_FILES["onnx"]).is_file() else "torch"

    def check(self) -> None:
        """Raise RunDirError when the run or its model file for the backend is missing (fail before serving)."""
        if not self.run.is_dir():
            raise RunDirError(f"no run directory at {self.run}")
        backend = self.resolved_backend
        needed = self.run / MODEL_FILES[backend]
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
            raise ConfigError(f"${SETTINGS_ENV} is not valid JSON ({_message(e)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"${SETTINGS_ENV} must be a JSON object")
        if data.get("api_key") is None and env.get(API_KEY_ENV):
            data["api_key"] = env[API_KEY_ENV]
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


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Stable machine-readable code: invalid_image, unauthorized, not_found, method_not_allowed, "
        "body_too_large, too_many_pixels, too_many_files, unsupported_media_type, invalid_request, not_ready; "
        "internal_error and model_error (5xx) are bugs."
    )
    message: str = Field(description="One line for humans; may change between versions.")
    request_id: str | None = Field(None, description="The X-Request-ID of the request (also in the logs).")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": {"code": "invalid_image", "request_id": "4f1c0a6e9b2d4c57",
                                                   "message": "not a supported image (expected PNG, JPEG, ...)"}}]}
    )  # fmt: skip
    error: ErrorDetail


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


# --------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A refusal at the HTTP level; subclasses fix the status and the stable code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class BodyTooLarge(ApiError):
    status, code = 413, "body_too_large"


class TooManyFiles(ApiError):
    status, code = 413, "too_many_files"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class InvalidRequest(ApiError):
    status, code = 422, "invalid_request"


class NotReady(ApiError):
    status, code = 503, "not_ready"


class PixelLimitError(ImageError):
    """An image whose header declares more pixels than the service accepts (refused before decoding)."""


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              413: "body_too_large", 415: "unsupported_media_type", 422: "invalid_request"}  # fmt: skip
ERROR_DOCS = {
    400: "The image cannot be decoded (code invalid_image).",
    401: "Missing or wrong API key (X-API-Key or Authorization: Bearer).",
    413: "Body over the size limit, image over the pixel limit, or too many files.",
    415: "Unsupported Content-Type.",
    422: "Malformed JSON, base64 or multipart body, or a missing field.",
    503: "The model is still loading (see /readyz); retry later.",
}


def _error_json(status: int, code: str, message: str, request_id: str | None, headers: dict | None = None) -> Response:
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def _message(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text.removeprefix("<bytes>: ") or type(e).__name__


def _install_error_handlers(app: FastAPI) -> None:
    """Each exception type mapped once to its status, code and the one error shape."""

    async def api_error(request: Request, exc: ApiError) -> Response:
        return _error_json(exc.status, exc.code, exc.message, _request_id(request), exc.headers)

    async def too_many_pixels(request: Request, exc: PixelLimitError) -> Response:
        return _error_json(413, "too_many_pixels", _message(exc), _request_id(request))

    async def image_error(request: Request, exc: ImageError) -> Response:
        return _error_json(400, "invalid_image", _message(exc), _request_id(request))

    async def digitlab_error(request: Request, exc: DigitlabError) -> Response:  # the run's fault, not the input's
        log.error("model error: %s", exc, extra={"fields": {"request_id": _request_id(request)}})
        return _error_json(500, "model_error", _message(exc), _request_id(request))

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return _error_json(422, "invalid_request", where or "invalid request", _request_id(request))

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, "internal_error" if exc.status_code >= 500 else "bad_request")
        return _error_json(exc.status_code, code, str(exc.detail), _request_id(request), exc.headers)

    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        return _error_json(
            400, "bad_request", "client disconnected before sending the whole body", _request_id(request)
        )

    async def internal_error(request: Request, exc: Exception) -> Response:
        rid = _request_id(request)
        headers = {REQUEST_ID_HEADER: rid} if rid else None
        return _error_json(500, "internal_error", f"internal error (request id {rid})", rid, headers)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(PixelLimitError, too_many_pixels)
    app.add_exception_handler(ImageError, image_error)
    app.add_exception_handler(DigitlabError, digitlab_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, disconnected)
    app.add_exception_handler(Exception, internal_error)


# --------------------------------------------------------------------------------------------- observability


class Metrics:
    """Prometheus families in the spirit of Triton's nv_inference_* and BentoML's bentoml_service_request_*."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        http = ["route", "method", "status"]
        self.requests = Counter("digitlab_http_requests", "HTTP requests by route, method and status.", http,
                                registry=registry)  # fmt: skip
        self.latency = Histogram("digitlab_http_request_duration_seconds", "HTTP request latency (server side).",
                                 http, buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip
        self.in_progress = Gauge("digitlab_http_requests_in_progress", "HTTP requests being served.", ["route"],
                                 registry=registry, multiprocess_mode="livesum")  # fmt: skip
        self.predictions = Counter("digitlab_predictions", "Predicted images by endpoint, digit and status.",
                                   ["endpoint", "digit", "status"], registry=registry)  # fmt: skip
        self.inference = Histogram("digitlab_inference_duration_seconds", "Decoding, preprocessing and model time "
                                   "per request (without queueing).", ["endpoint"], buckets=LATENCY_BUCKETS,
                                   registry=registry)  # fmt: skip
        self.batch_size = Histogram(
            "digitlab_batch_size",
            "Files per /v1/predict/batch request.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        )
        self.model_info = Gauge("digitlab_model_info", "The served model (value 1).", ["run", "backend", "preset"],
                                registry=registry, multiprocess_mode="max")  # fmt: skip

    def count(self, endpoint: str, preds: Sequence[Prediction]) -> None:
        for p in preds:
            self.predictions.labels(endpoint, "none" if p.digit is None else str(p.digit), p.status).inc()

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several workers: sum their files
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class ObservabilityMiddleware:
    """Request id (X-Request-ID in and out), request metrics and one structured access-log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # label by known route only: random paths must not grow the metric families

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        route = scope["path"] if scope["path"] in self.routes else "unmatched"
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, rid)
            await send(message)

        self.metrics.in_progress.labels(route).inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.in_progress.labels(route).dec()
            labels = (route, scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                headers = Headers(scope=scope)
                client = scope.get("client")
                fields = {"request_id": rid, "method": scope["method"], "path": scope["path"], "route": route,
                          "status": status, "duration_ms": round(elapsed * 1000, 3),
                          "client": f"{client[0]}:{client[1]}" if client else None,
                          "user_agent": headers.get("user-agent"),
                          "content_length": headers.get("content-length")}  # fmt: skip
                access_log.info("%s %s %d", scope["method"], scope["path"], status, extra={"fields": fields})


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: at once from Content-Length, else as soon as the streamed total passes it,
    so an oversized body is never held in memory whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            rid = scope.get("state", {}).get("request_id")
            msg = f"request body of {int(declared):,} bytes is over the limit of {limit:,} bytes"
            await _error_json(413, BodyTooLarge.code, msg, rid, {"Connection": "close"})(scope, receive, send)
            return
        total = 0

        async def limited() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > limit:
                    raise BodyTooLarge(f"request body is over the limit of {limit:,} bytes", {"Connection": "close"})
            return message

        await self.app(scope, limited, send)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's `fields` (access logs)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn `log_config`: JSON lines on stderr for uvicorn's and digitlab's loggers (uvicorn's own access
    log is replaced by digitlab.access, which carries the request id)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": handler},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "digitlab": {"handlers": ["stderr"], "level": lvl, "propagate": False},
        },
    }


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
    from digitlab.calibrate import read_calibration

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


class Service:
    """One worker's predictor, loaded once in the background; ready once a warm-up prediction has run."""

    def __init__(self, settings: ApiSettings, load: Callable[[], Predictor], metrics: Metrics) -> None:
        self.settings = settings
        self._load_predictor = load
        self.metrics = metrics
        self.predictor: Predictor | None = None
        self.model: ModelOut | None = None
        self.error: str | None = None
        self._limiter: anyio.CapacityLimiter | None = None

    async def start(self) -> None:
        self._limiter = anyio.CapacityLimiter(self.settings.concurrency)
        started = time.perf_counter()
        try:
            predictor, model = await anyio.to_thread.run_sync(self._load)
        except Exception as e:
            self.error = _message(e)
            log.error("model failed to load: %s", self.error, exc_info=not isinstance(e, DigitlabError))
            return
        self.predictor, self.model = predictor, model
        self.metrics.model_info.labels(model.run, model.backend, str(model.preset)).set(1)
        fields = {"run": model.run, "backend": model.backend, "seconds": round(time.perf_counter() - started, 3)}
        log.info("model ready", extra={"fields": fields})

    def _load(self) -> tuple[Predictor, ModelOut]:
        predictor = self._load_predictor()
        [warm] = predictor.predict(example_png())
        if warm.status == "error":
            raise RunDirError(f"warm-up prediction failed: {warm.message}")
        return predictor, _model_out(predictor, self.settings.run)

    def require(self) -> tuple[Predictor, ModelOut]:
        if self.predictor is None or self.model is None:
            why = f"model failed to load: {self.error}" if self.error else "model is loading"
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

        assert self._limiter is not None
        return await anyio.to_thread.run_sync(timed, limiter=self._limiter)


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
        raise InvalidRequest(f"body is not valid JSON ({_message(e)})") from None
    try:
        text = ImageJson.model_validate(obj).image
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())
        raise InvalidRequest(f'expected {{"image": "<base64>"}}: {where}') from None
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


def _check_pixels(data: bytes, limit: int) -> None:
    """Refuse an image whose header declares more than `limit` pixels, before a single pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            w, h = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PixelLimitError(f"too many pixels ({_message(e)})") from None
    except Exception:
        return  # unreadable header: decoding will say why (400)
    if w * h > limit:
        raise PixelLimitError(f"too many pixels ({w}x{h} = {w * h:,}, limit {limit:,})")


def _image_bytes(upload: Upload, pixel_limit: int) -> bytes:
    data = _image_from_json(upload.data) if upload.is_json else upload.data
    _check_pixels(data, pixel_limit)
    return data


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


def _predict_one(predictor: Predictor, upload: Upload, pixel_limit: int) -> Prediction:
    [p] = predictor.predict(_image_bytes(upload, pixel_limit))
    if p.status == "error":
        raise ImageError(p.message or "cannot decode image")
    return p


def _read_one(predictor: Predictor, upload: Upload, pixel_limit: int) -> ReadResult:
    result = predictor.read(_image_bytes(upload, pixel_limit))
    if result.status == "error":
        raise ImageError(result.message or "cannot decode image")
    return result


def _item_error(e: Exception) -> BatchItemError:
    if isinstance(e, PixelLimitError):
        return BatchItemError(code="too_many_pixels", message=_message(e))
    if isinstance(e, ApiError):
        return BatchItemError(code=e.code, message=e.message)
    return BatchItemError(code="invalid_image", message=_message(e))


def _predict_batch(predictor: Predictor, uploads: list[Upload], pixel_limit: int) -> list[tuple[BatchItem, Prediction]]:
    """One batched forward pass over the files that pass the checks; each other file gets its error in place."""
    from digitlab.predict import Prediction

    errors: dict[int, BatchItemError] = {}
    good: list[int] = []
    for i, up in enumerate(uploads):
        try:
            _check_image_type(up.content_type or "")
            _check_pixels(up.data, pixel_limit)
        except (ApiError, DigitlabError) as e:
            errors[i] = _item_error(e)
        else:
            good.append(i)
    preds: dict[int, Prediction] = dict(zip(good, predictor.predict([uploads[i].data for i in good]), strict=True))
    out = []
    for i, up in enumerate(uploads):
        p = preds.get(i)
        if p is not None and p.status == "error":
            errors[i] = BatchItemError(code="invalid_image", message=_message(Exception(p.message)))
        if i in errors:
            err = errors[i]
            p = Prediction(None, [], 0.0, "error", err.message)
        assert p is not None
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
    run, backend, threads and tta); it runs once, in a worker thread, after startup."""

    def default_load() -> Predictor:
        from digitlab.predict import Predictor

        return Predictor.from_run(settings.run, backend=settings.resolved_backend, threads=settings.threads,
                                  tta=settings.tta)  # fmt: skip

    metrics = Metrics(CollectorRegistry(auto_describe=True))
    service = Service(settings, load or default_load, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        task = asyncio.create_task(service.start())
        try:
            yield
        finally:
            if not task.done():
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
    )
    app.state.service = service
    app.state.settings = settings
    _install_error_handlers(app)

    auth: list[Any] = []
    if settings.api_key is not None:
        key = settings.api_key.encode()

        async def require_key(
            header: Annotated[str | None, Security(API_KEY_HEADER)] = None,
            bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
        ) -> None:
            given = header if header is not None else (bearer.credentials if bearer is not None else None)
            # compare_digest: the time taken does not depend on where the first wrong character is
            if given is None or not hmac.compare_digest(given.encode(), key):
                raise Unauthorized("missing or wrong API key", {"WWW-Authenticate": "Bearer"})

        auth = [Depends(require_key)]
    v1_errors = (401, 503) if auth else (503,)
    image_errors = _errors(400, *v1_errors, 413, 415, 422)
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
        p = await service.run("predict", _predict_one, predictor, upload, settings.pixel_limit)
        metrics.count("predict", [p])
        return _prediction_out(p, model.run)

    @app.post("/v1/predict/batch", response_model=BatchOut, responses=_errors(*v1_errors, 413, 415, 422),
              dependencies=auth, tags=["v1"], openapi_extra=_batch_body(settings.max_batch),
              summary="Recognize the digit in each of several images")  # fmt: skip
    async def predict_batch(request: Request) -> BatchOut:
        """Up to `max_batch` files as multipart parts named `files`; one result per file, in order. A file that
        cannot be decoded gets status 'error' with its code in place; the request itself succeeds."""
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
        rows = await service.run("batch", _predict_batch, predictor, uploads, settings.pixel_limit)
        metrics.count("batch", [p for _, p in rows])
        return BatchOut(model=model.run, count=len(rows), results=[item for item, _ in rows])

    @app.post("/v1/read", response_model=ReadOut, responses=image_errors, dependencies=auth, tags=["v1"],
              openapi_extra=_image_body(example), summary="Read a number written on one line")  # fmt: skip
    async def read(request: Request) -> ReadOut:
        """The image is sent as for /v1/predict; the digits come back left to right, each with its box."""
        predictor, model, upload = await _single(request)
        result = await service.run("read", _read_one, predictor, upload, settings.pixel_limit)
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

    @app.get("/metrics", response_class=Response, tags=["ops"], summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format."}})  # fmt: skip
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # Outermost first: request id / metrics / access log, then CORS (so errors carry its headers), then the
    # body limit (so nothing reads past it).
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization", "X-API-Key", REQUEST_ID_HEADER],
                           expose_headers=[REQUEST_ID_HEADER], max_age=600)  # fmt: skip
    routes = frozenset(getattr(r, "path", "") for r in app.routes)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, routes=routes)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (`uvicorn digitlab.api:app_from_env --factory`): the app for $DIGITLAB_API_SETTINGS."""
    return create_app(ApiSettings.from_env())
