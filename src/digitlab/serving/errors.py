"""REST API errors: the one JSON error shape, the exception types behind it and the handlers that render them."""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from digitlab.core.errors import DigitlabError, ImageError

REQUEST_ID_HEADER = "X-Request-ID"
log = logging.getLogger("digitlab.api")

# An absolute POSIX path (at least one component) or a Windows drive path, not inside a word or a URL.
_PATH = re.compile(r"(?<![\w.~/:-])(?:/[\w.@+~%=-]+)+/?|\b[A-Za-z]:\\[^\s'\"]+")


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Stable machine-readable code: invalid_image, bad_request, unauthorized, not_found, "
        "method_not_allowed, request_timeout, body_too_large, too_many_pixels, too_many_files, "
        "request_header_too_large, unsupported_media_type, invalid_request, not_ready; internal_error (500) is a bug."
    )
    message: str = Field(description="One line for humans; may change between versions. Never holds a file path.")
    request_id: str | None = Field(None, description="The X-Request-ID of the request (also in the logs).")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": {"code": "invalid_image", "request_id": "4f1c0a6e9b2d4c57",
                                                   "message": "not a supported image (expected PNG, JPEG, ...)"}}]}
    )  # fmt: skip
    error: ErrorDetail


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


class BodyTimeout(ApiError):
    status, code = 408, "request_timeout"


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
    """Images whose headers declare more pixels than the service accepts (refused before decoding)."""


HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              408: "request_timeout", 413: "body_too_large", 415: "unsupported_media_type",
              422: "invalid_request", 431: "request_header_too_large"}  # fmt: skip
ERROR_DOCS = {
    400: "The image cannot be decoded (code invalid_image), or the input is otherwise refused (bad_request).",
    401: "Missing or wrong API key (X-API-Key or Authorization: Bearer).",
    408: "The request body did not arrive in time.",
    413: "Body over the size limit, images over the pixel limits, or too many files.",
    415: "Unsupported Content-Type.",
    422: "Malformed JSON, base64 or multipart body, or a missing field.",
    503: "The model is not loaded (see /readyz); retry later.",
}


def error_responses(*statuses: int, docs: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each in the one error shape (`docs`: other descriptions)."""
    described = {**ERROR_DOCS, **(docs or {})}
    return {s: {"model": ErrorResponse, "description": described[s]} for s in statuses}


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type name when it has none)."""
    text = " ".join(str(e).split())
    return text.removeprefix("<bytes>: ") or type(e).__name__


def _short_path(m: re.Match[str]) -> str:
    text = m.group(0)
    if text.startswith("/") and not os.path.isdir("/" + text[1:].split("/", 1)[0]):
        return text  # not under a directory this machine has at its root: a URL path such as /v1/predict
    name = re.split(r"[\\/]", text.rstrip("/\\"))[-1]
    return f".../{name}" if name else "..."


def redact_paths(text: str) -> str:
    """`text` with absolute file paths cut to their last component: error messages must not map the server's disk."""
    return _PATH.sub(_short_path, text)


def public_message(e: BaseException) -> str:
    """What a client may read of an exception: one line, without file paths."""
    return redact_paths(one_line(e))


def error_json(status: int, code: str, message: str, request_id: str | None, headers: dict | None = None) -> Response:
    body = {"error": {"code": code, "message": redact_paths(message), "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)


def raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response in the one shape, for the protocol layer (no app, no request id yet)."""
    rid = uuid.uuid4().hex
    body = json.dumps({"error": {"code": code, "message": message, "request_id": rid}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{REQUEST_ID_HEADER.lower()}: {rid}\r\nconnection: close\r\n\r\n")  # fmt: skip
    return head.encode("ascii") + body


def request_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def install_error_handlers(app: FastAPI) -> None:
    """Each exception type mapped once to its status, code and the one error shape."""

    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_json(exc.status, exc.code, exc.message, request_id_of(request), exc.headers)

    async def too_many_pixels(request: Request, exc: PixelLimitError) -> Response:
        return error_json(413, "too_many_pixels", one_line(exc), request_id_of(request))

    async def image_error(request: Request, exc: ImageError) -> Response:
        return error_json(400, "invalid_image", one_line(exc), request_id_of(request))

    async def digitlab_error(request: Request, exc: DigitlabError) -> Response:  # raised for what the client sent
        log.warning("refused: %s", exc, extra={"fields": {"request_id": request_id_of(request)}})
        return error_json(400, "bad_request", one_line(exc), request_id_of(request))

    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return error_json(422, "invalid_request", where or "invalid request", request_id_of(request))

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, "internal_error" if exc.status_code >= 500 else "bad_request")
        return error_json(exc.status_code, code, str(exc.detail), request_id_of(request), exc.headers)

    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        msg = "client disconnected before sending the whole body"
        return error_json(400, "bad_request", msg, request_id_of(request))

    async def internal_error(request: Request, exc: Exception) -> Response:
        rid = request_id_of(request)
        headers = {REQUEST_ID_HEADER: rid} if rid else None
        return error_json(500, "internal_error", f"internal error (request id {rid})", rid, headers)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(PixelLimitError, too_many_pixels)
    app.add_exception_handler(ImageError, image_error)
    app.add_exception_handler(DigitlabError, digitlab_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, disconnected)
    app.add_exception_handler(Exception, internal_error)
