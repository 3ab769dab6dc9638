"""REST API observability: Prometheus metrics, request ids and structured (JSON lines) logs."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitlab.serving.errors import REQUEST_ID_HEADER

if TYPE_CHECKING:
    from digitlab.inference.predict import Prediction

__all__ = ["JsonFormatter", "Metrics", "ObservabilityMiddleware", "log_config"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("digitlab.access")


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
