"""REST API feedback routes: a user's label for an image, stored with the server's own prediction; stats; deletion."""

# * POST /v1/feedback takes the image as /v1/predict does (multipart field `file`, or JSON with base64 `image`)
#   with the label (0-9), an optional anonymous `session` id and an optional `prediction`: the digit the client
#   was shown. The server predicts the image again and stores its own answer (the 28x28 it saw, digit or
#   refusal, probabilities, run id): what a client says the model answered is never stored, it cannot be
#   checked. The echo is validated (a digit) and answered with `prediction_matches`, so that a client showing a
#   stale or different model's answer finds out.
# * The same body limit, pixel limits, API key and error shape as /v1/predict. Every refusal (bad or missing
#   label, missing or corrupt image, unknown field, body too big) happens before the row is written: the store
#   is unchanged. A store that cannot be reached answers 503 (store_unavailable), never 500.
# * The store opens lazily, in a worker thread, on the first request that needs it (and again after a failure):
#   `digitlab serve` has opened and migrated it once already, before starting the workers.

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from digitlab.data.feedback_store import FeedbackStore, FeedbackStoreError, shown_url
from digitlab.serving.errors import ApiError, InvalidRequest, UnsupportedMediaType, error_responses, one_line
from digitlab.serving.routes import predict_one
from digitlab.serving.service import Service, example_png
from digitlab.serving.uploads import IMAGE_TYPES, Upload, binary_schema, check_image_type, image_from_text, media_type

if TYPE_CHECKING:  # digitlab.inference.predict imports torch: see digitlab.serving.service
    from digitlab.inference.predict import Prediction, Predictor

__all__ = ["FeedbackCreated", "FeedbackJson", "FeedbackStatsOut", "add_feedback_routes"]

SESSION_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"  # an opaque id (a UUID, a random token): nothing to identify anyone
FIELDS = ("file", "label", "session", "prediction")
log = logging.getLogger("digitlab.api")
T = TypeVar("T")


class NotFound(ApiError):
    status, code = 404, "not_found"


class StoreUnavailable(ApiError):
    status, code = 503, "store_unavailable"


# --------------------------------------------------------------------------------------------- models


class FeedbackFields(BaseModel):
    """What comes with the image: its label, and optionally a session id and the digit the client was shown."""

    model_config = ConfigDict(extra="forbid")
    label: StrictInt = Field(ge=0, le=9, description="The digit the image really shows.")
    session: str | None = Field(None, pattern=SESSION_PATTERN, description="An anonymous session id (optional).")
    prediction: StrictInt | None = Field(
        None, ge=0, le=9, description="The digit the client was shown (checked against the server's, not stored)."
    )


class FeedbackJson(FeedbackFields):
    """A label for an image, as JSON (the image in base64, or a data: URL)."""

    image: str = Field(min_length=1, description="Base64 of the image file (or a data:image/...;base64, URL).",
                       json_schema_extra={"contentEncoding": "base64"})  # fmt: skip


class FeedbackCreated(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"id": "0b5e8f8e-3c1e-4f43-9d55-5f1f1b2d8e10", "model": "fast", "digit": 1,
                                         "status": "ok", "agreed": True, "prediction_matches": None}]}
    )  # fmt: skip
    id: str = Field(description="The stored row's id (a UUID): DELETE /v1/feedback/{id} removes it.")
    model: str = Field(description="Run id of the model whose answer was stored.")
    digit: int | None = Field(ge=0, le=9, description="The server's answer for the image; null when it refused.")
    status: Literal["ok", "empty", "not_a_digit"]
    agreed: bool = Field(description="The server's answer is the label.")
    prediction_matches: bool | None = Field(description="The echoed `prediction` is the server's answer (null: none).")


class LabelStats(BaseModel):
    label: int = Field(ge=0, le=9)
    count: int = Field(ge=0)
    agreed: int = Field(ge=0, description="Rows of this label that the model answered correctly.")


class ModelStatsOut(BaseModel):
    model: str
    count: int = Field(ge=0)
    agreed: int = Field(ge=0)
    agreement: float | None = Field(ge=0.0, le=1.0, description="agreed / count (null without rows).")


class FeedbackStatsOut(BaseModel):
    total: int = Field(ge=0)
    agreed: int = Field(ge=0, description="Rows where the model's answer was the user's label.")
    agreement: float | None = Field(ge=0.0, le=1.0, description="agreed / total (null without rows).")
    by_label: list[LabelStats] = Field(description="All ten labels, in order, zeros included.")
    by_model: list[ModelStatsOut]


# --------------------------------------------------------------------------------------------- input


@dataclass(frozen=True)
class FeedbackInput:
    upload: Upload
    label: int
    session: str | None
    prediction: int | None


async def _read_feedback(request: Request) -> FeedbackInput | bytes:
    """A multipart body, parsed (its fields checked); a JSON body as its bytes, for a worker thread to parse."""
    kind = media_type(request.headers.get("content-type"))
    if kind == "application/json":
        return await request.body()
    if kind != "multipart/form-data":
        raise UnsupportedMediaType(f"{kind or 'no Content-Type'}: send multipart/form-data or application/json")
    parser = MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=len(FIELDS),
                             max_part_size=1024)  # fmt: skip
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise InvalidRequest(f"malformed multipart body: {e.message} (send one file, 'file', and the label)") from None
    try:
        unknown = sorted(set(form.keys()) - set(FIELDS))
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(map(repr, unknown))}: send {', '.join(FIELDS)}")
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidRequest("no file in the multipart body: send the image as the file field 'file'")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if "label" not in fields:
            raise InvalidRequest("no label: send the digit the image shows as the field 'label' (0-9)")
        upload = Upload(await file.read(), filename=file.filename, content_type=media_type(file.content_type))
    finally:
        await form.close()
    check_image_type(upload.content_type or "")
    return _checked(upload, fields.get("label"), fields.get("session"), fields.get("prediction"))


def _checked(upload: Upload, label: Any, session: Any, prediction: Any) -> FeedbackInput:
    try:
        data = FeedbackFields(label=_digit(label, "label"), session=session or None,
                              prediction=_digit(prediction, "prediction"))  # fmt: skip
    except ValidationError as e:
        raise InvalidRequest(_where(e)) from None
    return FeedbackInput(upload, data.label, data.session, data.prediction)


def _digit(value: Any, name: str) -> Any:
    """A form field's text as the digit it holds; other values as they are (the model's checks refuse them)."""
    if isinstance(value, str):
        if value.strip() == "" and name == "prediction":
            return None
        if not re.fullmatch(r"\s*[0-9]\s*", value):
            raise InvalidRequest(f"{name} must be a digit 0-9, not {value[:20]!r}")
        return int(value)
    return value


def _where(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())


def _from_json(body: bytes) -> FeedbackInput:
    try:
        obj = json.loads(body)
    except RecursionError:
        raise InvalidRequest("body is not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise InvalidRequest(f"body is not valid JSON ({one_line(e)})") from None
    try:
        data = FeedbackJson.model_validate(obj)
    except ValidationError as e:
        raise InvalidRequest(f'expected {{"image": "<base64>", "label": 0-9, ...}}: {_where(e)}') from None
    return FeedbackInput(Upload(image_from_text(data.image)), data.label, data.session, data.prediction)


def _predict_feedback(
    service: Service, predictor: Predictor, body: FeedbackInput | bytes
) -> tuple[FeedbackInput, Prediction]:
    """(the checked input, the server's prediction for its image); in a worker thread (JSON parsing is CPU work)."""
    item = _from_json(body) if isinstance(body, bytes) else body
    return item, predict_one(service, predictor, item.upload)


# --------------------------------------------------------------------------------------------- the store


class StoreHandle:
    """A worker's store, opened on first use (again after a failure); its errors become 503s."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: FeedbackStore | None = None
        self._lock = threading.Lock()

    def call(self, fn: Callable[[FeedbackStore], T]) -> T:
        """`fn(store)`, in a worker thread."""
        try:
            with self._lock:
                if self._store is None:
                    self._store = FeedbackStore.open(self.url)
            return fn(self._store)
        except FeedbackStoreError as e:  # the database's fault, not the request's: logged with its reason
            log.error("feedback store %s unavailable: %s", shown_url(self.url), one_line(e))
            raise StoreUnavailable("the feedback store is unavailable; retry later", {"Retry-After": "5"}) from None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


# --------------------------------------------------------------------------------------------- routes


# What these routes' 404 and 503 mean (the other statuses as on every route).
ERROR_DOCS = {404: "No feedback with that id.",
              503: "The model is not loaded, or the feedback store is unavailable; retry later."}  # fmt: skip


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return error_responses(*statuses, docs=ERROR_DOCS)


def _feedback_body() -> dict[str, Any]:
    """OpenAPI requestBody of POST /v1/feedback: multipart (file and fields) or JSON."""
    schema = FeedbackJson.model_json_schema()
    props = {"file": binary_schema("The image file (PNG, JPEG, WebP, BMP, GIF or TIFF)."),
             **{k: v for k, v in schema["properties"].items() if k != "image"}}  # fmt: skip
    example = {"image": base64.b64encode(example_png()).decode(), "label": 1, "session": "c0ffee-42"}
    content = {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file", "label"], "properties": props},
                                "encoding": {"file": {"contentType": ", ".join(IMAGE_TYPES)}}},
        "application/json": {"schema": schema, "example": example},
    }  # fmt: skip
    return {"requestBody": {"required": True, "content": content}}


def add_feedback_routes(app: FastAPI, service: Service, auth: list[Any], url: str) -> None:
    """POST /v1/feedback, GET /v1/feedback/stats and DELETE /v1/feedback/{id} on `app`, storing in `url`."""
    handle = StoreHandle(url)
    v1_errors = (401, 503) if auth else (503,)

    async def in_store(fn: Callable[[FeedbackStore], T]) -> T:
        return await anyio.to_thread.run_sync(handle.call, fn)

    @app.post("/v1/feedback", status_code=201, response_model=FeedbackCreated, dependencies=auth, tags=["feedback"],
              responses=_errors(400, *v1_errors, 408, 413, 415, 422), openapi_extra=_feedback_body(),
              summary="Store the right label for an image, with the model's own answer")  # fmt: skip
    async def post_feedback(request: Request) -> FeedbackCreated:
        """The image as multipart field `file` with the fields `label` (0-9), `session` and `prediction`
        (both optional), or as JSON `{"image": "<base64>", "label": 7, ...}`. Returns the row's id."""
        predictor, model = service.require()
        await in_store(lambda store: None)  # a store that cannot be reached fails before any decoding
        body = await _read_feedback(request)
        item, p = await service.run("feedback", _predict_feedback, service, predictor, body)
        row_id = await in_store(partial(_add, item=item, p=p, model=model.run))
        echo = None if item.prediction is None else item.prediction == p.digit
        return FeedbackCreated(id=row_id, model=model.run, digit=p.digit, status=p.status,
                               agreed=p.digit == item.label, prediction_matches=echo)  # fmt: skip

    @app.get("/v1/feedback/stats", response_model=FeedbackStatsOut, dependencies=auth, tags=["feedback"],
             responses=_errors(*v1_errors),
             summary="Feedback counts by label and by model, and how often the model agreed")  # fmt: skip
    async def feedback_stats() -> FeedbackStatsOut:
        s = await in_store(lambda store: store.stats())
        return FeedbackStatsOut(
            total=s.total, agreed=s.agreed, agreement=s.agreement,
            by_label=[LabelStats(label=d, count=s.by_label[d], agreed=s.agreed_by_label[d]) for d in range(10)],
            by_model=[ModelStatsOut(model=m.model, count=m.count, agreed=m.agreed, agreement=m.agreement)
                      for m in s.by_model],
        )  # fmt: skip

    @app.delete("/v1/feedback/{feedback_id}", status_code=204, response_class=Response, dependencies=auth,
                tags=["feedback"], responses={204: {"description": "Deleted."}, **_errors(404, *v1_errors)},
                summary="Delete one feedback row (its image included)")  # fmt: skip
    async def delete_feedback(feedback_id: str) -> Response:
        if not await in_store(lambda store: store.delete(feedback_id)):
            raise NotFound("no feedback with that id")
        return Response(status_code=204)

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI):  # noqa: ANN202
        async with inner(a) as state:
            yield state
        handle.close()

    app.router.lifespan_context = lifespan


def _add(store: FeedbackStore, *, item: FeedbackInput, p: Prediction, model: str) -> str:
    return store.add(image=item.upload.data, model_input=p.input, label=item.label, predicted=p.digit, status=p.status,
                     probabilities=p.probabilities, model=model, source="api", session=item.session)  # fmt: skip
