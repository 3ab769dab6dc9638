"""One worker's service: the predictor, loaded once and warmed up (or retried in the background), and its bounds."""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitlab.core.calibration import read_calibration
from digitlab.core.errors import DigitlabError, RunDirError
from digitlab.core.jsonfile import json_number
from digitlab.core.rundir import MODEL_FILES
from digitlab.serving.errors import NotReady, one_line, public_message
from digitlab.serving.limits import DecodeMemory, ImageHead, check_request_pixels
from digitlab.serving.observability import Metrics
from digitlab.serving.schemas import CalibrationOut, ModelOut, OodOut
from digitlab.serving.settings import ApiSettings, MiB

if TYPE_CHECKING:  # digitlab.inference.predict imports torch: only the workers need it, not uvicorn's supervisor
    from digitlab.inference.predict import Predictor

LOAD_RETRY_S = 5.0  # with wait_for_model: seconds between attempts to load a model that failed to load

log = logging.getLogger("digitlab.api")
T = TypeVar("T")


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


def run_identity(run: Path, backend: str) -> dict[str, str | None]:
    """When the model file `backend` loads from `run` was written, and its SHA-256 (None each when unreadable)."""
    path = Path(run) / MODEL_FILES.get(backend, MODEL_FILES["torch"])
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        created = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    except OSError:
        return {"created": None, "checkpoint_sha256": None}
    return {"created": created, "checkpoint_sha256": digest}


def model_out(predictor: Predictor, run: Path) -> ModelOut:
    info = predictor.info
    run = Path(info.get("path") or run)  # the directory the predictor was loaded from (a symlink resolved)
    try:
        cal = read_calibration(run)
    except DigitlabError:
        cal = {}

    ood = info.get("ood")
    return ModelOut(
        run=str(info.get("run")), preset=info.get("preset"), architecture=info.get("model"),
        params=info.get("params") if isinstance(info.get("params"), int) else None,
        test_accuracy=json_number(info.get("test_accuracy")), backend=str(info["backend"]), tta=bool(info.get("tta")),
        device=str(info.get("device")),
        calibration=CalibrationOut(temperature=float(info["temperature"]), ece=json_number(cal.get("ece_after")),
                                   nll=json_number(cal.get("nll_after")),
                                   fitted_on=cal.get("fitted_on") if isinstance(cal.get("fitted_on"), str) else None,
                                   ood=OodOut(**ood) if isinstance(ood, dict) else None),
        **run_identity(run, str(info["backend"])),
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
        return predictor, model_out(predictor, self.settings.run)

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
