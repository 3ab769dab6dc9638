"""The API's routes: /v1/predict, /v1/predict/batch, /v1/read, /v1/model and the ops probes, and their work."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from digitlab.core.errors import DigitlabError, ImageError
from digitlab.serving.errors import (
    ApiError,
    InvalidRequest,
    PixelLimitError,
    TooManyFiles,
    UnsupportedMediaType,
    error_responses,
    public_message,
    redact_paths,
)
from digitlab.serving.limits import ImageHead, image_head
from digitlab.serving.observability import Metrics
from digitlab.serving.schemas import (
    BatchItem,
    BatchItemError,
    BatchOut,
    HealthOut,
    ModelOut,
    PredictionOut,
    ReadDigitOut,
    ReadOut,
    ReadyOut,
)
from digitlab.serving.service import Service, example_png
from digitlab.serving.settings import ApiSettings
from digitlab.serving.uploads import (
    Upload,
    batch_body,
    check_image_type,
    image_body,
    image_data,
    media_type,
    parse_multipart,
    read_files,
    read_image,
)

if TYPE_CHECKING:  # digitlab.inference.predict imports torch: only the workers need it, not uvicorn's supervisor
    from digitlab.inference.predict import Prediction, Predictor, ReadResult


def prediction_out(p: Prediction, model: str) -> PredictionOut:
    return PredictionOut(digit=p.digit, confidence=p.confidence, probabilities=p.probabilities, status=p.status,
                         message=p.message, model=model)  # type: ignore[arg-type]  # fmt: skip


def predict_one(service: Service, predictor: Predictor, upload: Upload) -> Prediction:
    head = image_head(image_data(upload), service.settings.pixel_limit)
    [p] = service.decode(predictor.predict, [head])
    if p.status == "error":
        raise ImageError(p.message or "cannot decode image")
    return p


def read_one(service: Service, predictor: Predictor, upload: Upload) -> ReadResult:
    # Never reduced: the boxes it gives are in the source's own pixels.
    head = image_head(image_data(upload), service.settings.pixel_limit, reduce=False)
    result = service.decode(lambda sources: predictor.read(sources[0]), [head])
    if result.status == "error":
        raise ImageError(result.message or "cannot decode image")
    return result


def item_error(e: Exception) -> BatchItemError:
    if isinstance(e, PixelLimitError):
        return BatchItemError(code="too_many_pixels", message=public_message(e))
    if isinstance(e, ApiError):
        return BatchItemError(code=e.code, message=redact_paths(e.message))
    return BatchItemError(code="invalid_image", message=public_message(e))


def batch_items(service: Service, predictor: Predictor, uploads: list[Upload]) -> list[tuple[BatchItem, Prediction]]:
    """One batched forward pass over the files that pass the checks; each other file gets its error in place. The
    pixels of the files that pass count against the request's limit together (over it: the request is refused)."""
    from digitlab.inference.predict import Prediction

    errors: dict[int, BatchItemError] = {}
    heads: dict[int, ImageHead] = {}
    for i, up in enumerate(uploads):
        try:
            check_image_type(up.content_type or "")
            heads[i] = image_head(up.data, service.settings.pixel_limit)
        except (ApiError, DigitlabError) as e:
            errors[i] = item_error(e)
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


def add_v1_routes(app: FastAPI, service: Service, settings: ApiSettings, auth: list[Any]) -> None:
    """/v1/predict, /v1/predict/batch, /v1/read and /v1/model on `app`; `auth`: the API key dependencies."""
    metrics = service.metrics
    v1_errors = (401, 503) if auth else (503,)
    image_errors = error_responses(400, *v1_errors, 408, 413, 415, 422)
    example = base64.b64encode(example_png()).decode()

    async def single(request: Request) -> tuple[Predictor, ModelOut, Upload]:
        predictor, model = service.require()
        return predictor, model, await read_image(request)

    @app.post("/v1/predict", response_model=PredictionOut, responses=image_errors, dependencies=auth, tags=["v1"],
              openapi_extra=image_body(example), summary="Recognize the digit in one image")  # fmt: skip
    async def predict(request: Request) -> PredictionOut:
        """One image as the multipart file field `file`, as JSON `{"image": "<base64>"}`, or as the raw body
        (Content-Type image/png, image/jpeg, ...)."""
        predictor, model, upload = await single(request)
        p = await service.run("predict", predict_one, service, predictor, upload)
        metrics.count("predict", [p])
        return prediction_out(p, model.run)

    @app.post("/v1/predict/batch", response_model=BatchOut, responses=error_responses(*v1_errors, 408, 413, 415, 422),
              dependencies=auth, tags=["v1"], openapi_extra=batch_body(settings.max_batch),
              summary="Recognize the digit in each of several images")  # fmt: skip
    async def predict_batch(request: Request) -> BatchOut:
        """Up to `max_batch` files as multipart parts named `files`; one result per file, in order. A file that
        cannot be decoded gets status 'error' with its code in place; the request itself succeeds unless the
        files hold more pixels together than `request_pixel_limit` (413)."""
        predictor, model = service.require()
        uploads = await _batch_uploads(request, settings.max_batch)
        metrics.batch_size.observe(len(uploads))
        rows = await service.run("batch", batch_items, service, predictor, uploads)
        metrics.count("batch", [p for _, p in rows])
        return BatchOut(model=model.run, count=len(rows), results=[item for item, _ in rows])

    @app.post("/v1/read", response_model=ReadOut, responses=image_errors, dependencies=auth, tags=["v1"],
              openapi_extra=image_body(example), summary="Read a number written on one line")  # fmt: skip
    async def read(request: Request) -> ReadOut:
        """The image is sent as for /v1/predict; the digits come back left to right, each with its box."""
        predictor, model, upload = await single(request)
        result = await service.run("read", read_one, service, predictor, upload)
        metrics.count("read", [d.prediction for d in result.digits])
        return read_out(result, model.run)

    @app.get("/v1/model", response_model=ModelOut, responses=error_responses(*v1_errors), dependencies=auth,
             tags=["v1"], summary="The served model: run, preset, size, accuracy, calibration, backend")  # fmt: skip
    async def model_info() -> ModelOut:
        return service.require()[1]


async def _batch_uploads(request: Request, limit: int) -> list[Upload]:
    """The files of a /v1/predict/batch request (multipart parts named `files`, at most `limit`)."""
    kind = media_type(request.headers.get("content-type"))
    if kind != "multipart/form-data":
        raise UnsupportedMediaType(f"{kind or 'no Content-Type'}: send the files as multipart/form-data")
    files = await parse_multipart(request, limit, lambda: TooManyFiles(f"more than {limit} files in one batch"))
    uploads = await read_files(files)
    if not uploads:
        raise InvalidRequest("no files in the multipart body: send each image as a file field named 'files'")
    return uploads


def read_out(result: ReadResult, model: str) -> ReadOut:
    digits = [ReadDigitOut(box=list(d.box), digit=d.digit, confidence=d.confidence,
                           probabilities=d.prediction.probabilities, status=d.status,  # type: ignore[arg-type]
                           message=d.prediction.message) for d in result.digits]  # fmt: skip
    return ReadOut(text=result.text, status=result.status, message=result.message, digits=digits,  # type: ignore[arg-type]
                   model=model)  # fmt: skip


def add_ops_routes(app: FastAPI, service: Service, metrics: Metrics, auth: list[Any]) -> None:
    """/healthz, /readyz (GET and HEAD) and /metrics (behind `auth` unless it is empty)."""

    @app.get("/healthz", response_model=HealthOut, tags=["ops"], summary="The process is alive")
    async def healthz() -> HealthOut:
        return HealthOut(status="ok")

    @app.get("/readyz", response_model=ReadyOut, responses=error_responses(503), tags=["ops"],
             summary="200 once the model is loaded and warmed up, 503 before")  # fmt: skip
    async def readyz() -> ReadyOut:
        _, model = service.require()
        return ReadyOut(status="ready", model=model.run, backend=model.backend)

    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):  # HEAD too: what load balancers send
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", response_class=Response, tags=["ops"], summary="Prometheus metrics", dependencies=auth,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format."},
                        **(error_responses(401) if auth else {})})  # fmt: skip
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
