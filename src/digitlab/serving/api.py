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
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from starlette.middleware.cors import CORSMiddleware

from digitlab import __version__
from digitlab.serving.errors import REQUEST_ID_HEADER, install_error_handlers
from digitlab.serving.limits import BodyLimitMiddleware
from digitlab.serving.observability import Metrics, ObservabilityMiddleware
from digitlab.serving.reload import add_reload_routes
from digitlab.serving.routes import add_ops_routes, add_v1_routes
from digitlab.serving.security import key_dependencies
from digitlab.serving.service import OneLineStartupError, Service
from digitlab.serving.settings import ApiSettings

if TYPE_CHECKING:  # digitlab.inference.predict imports torch: only the workers need it, not uvicorn's supervisor
    from digitlab.inference.predict import Predictor

__all__ = ["app_from_env", "create_app"]

DOCS_ASSETS = "/docs-assets"  # Swagger UI and ReDoc, served from the fastapi-offline package (no CDN)


def create_app(settings: ApiSettings, *, load: Callable[[], Predictor] | None = None) -> FastAPI:
    """The service for `settings`. `load` builds the predictor (default: `Predictor.from_run` with the settings'
    run, backend, threads and tta); it runs once, in a worker thread, at startup (in the background with
    `wait_for_model`)."""

    def default_load() -> Predictor:
        from digitlab.inference.predict import Predictor

        # resolved once: a symlink repointed meanwhile (to reload, digitlab.serving.reload) never mixes two runs'
        # files
        return Predictor.from_run(settings.run.resolve(), backend=settings.resolved_backend, threads=settings.threads,
                                  tta=settings.tta)  # fmt: skip

    metrics = Metrics(CollectorRegistry(auto_describe=True))
    service = Service(settings, load or default_load, metrics)
    app = FastAPI(
        title="digitlab",
        version=__version__,
        summary="Handwritten digit recognition: one image, a batch, or a number written on one line.",
        description="Every answer carries calibrated probabilities and a status ('ok', 'empty', 'not_a_digit'). "
        'Errors have one shape: `{"error": {"code", "message", "request_id"}}`.',
        lifespan=_lifespan(service),
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.settings = settings
    install_error_handlers(app)
    _offline_docs(app)
    auth = key_dependencies(None if settings.no_auth else settings.api_key)
    add_v1_routes(app, service, settings, auth)
    add_ops_routes(app, service, metrics, [] if settings.public_metrics else auth)
    if settings.feedback_db is not None:
        from digitlab.serving.feedback import add_feedback_routes

        add_feedback_routes(app, service, auth, settings.feedback_db)
    add_reload_routes(app, service, settings)
    _add_middleware(app, settings, service, metrics)
    return app


def _lifespan(service: Service) -> Callable[[FastAPI], AsyncIterator[None]]:
    """Load the model before serving (or in the background with wait_for_model); on shutdown, stop loading and
    leave the multiprocess metrics."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        if service.settings.wait_for_model:
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

    return lifespan


def _add_middleware(app: FastAPI, settings: ApiSettings, service: Service, metrics: Metrics) -> None:
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
