"""Hot reload of the served model: SIGHUP or POST /v1/admin/reload re-reads the run and swaps the predictor."""

# Usage:
#
#     ln -sfn runs/fast-ft runs/current        # serve a symlink: `digitlab serve runs/current --workers 2`
#     kill -HUP <digitlab serve's pid>         # or: curl -X POST -H "X-API-Key: $KEY" .../v1/admin/reload
#
# * `digitlab serve RUN` keeps RUN as given, a symlink included; each load resolves it once and reads that one
#   directory (never half of one run and half of another). A worker loads the new model in a thread, runs the
#   warm-up prediction, then swaps it in with one assignment in the event loop: a request already running
#   finishes on the predictor it took at its start; the next one gets the new model. Nothing is dropped.
# * A reload that fails (a broken or half-written run, a missing model file, a failed warm-up) changes nothing:
#   the old model keeps answering, the worker logs one line, and the route answers 409 with it (no paths).
# * A reload that finds the model already served (same run id, model-file hash and calibration) keeps it.
# * Several workers: `serving.server.Supervisor` forwards SIGHUP to each of them. The admin route reloads the worker
#   that took the request, then signals the supervisor (named in $DIGITLAB_SUPERVISOR_PID, and only when it is
#   this worker's parent), so that every other worker follows within a second.
# * The admin route needs the API key; a server without one refuses it (403): admin actions are never open.
# * The SIGHUP handler is a plain `signal.signal` one, set when the app is made in a main thread (uvicorn's
#   workers; the last app made there takes it): a signal before the model has loaded is kept, and the run is
#   re-read once the start is over.

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Literal

import anyio.to_thread
from fastapi import FastAPI
from pydantic import BaseModel, Field

from digitlab.serving.errors import ERROR_DOCS, ApiError, ErrorResponse, one_line, public_message
from digitlab.serving.schemas import ModelOut
from digitlab.serving.security import key_dependencies
from digitlab.serving.service import Service
from digitlab.serving.settings import ApiSettings

__all__ = ["SUPERVISOR_ENV", "Reloader", "ReloadOut", "add_reload_routes", "forward_reload"]

SUPERVISOR_ENV = "DIGITLAB_SUPERVISOR_PID"  # set by serving.server.Supervisor for its workers
log = logging.getLogger("digitlab.api")


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class ReloadFailed(ApiError):
    status, code = 409, "reload_failed"


class ReloadOut(BaseModel):
    status: Literal["reloaded", "unchanged"] = Field(description="'unchanged': the run holds the model served.")
    previous: str | None = Field(description="Run id of the model served before.")
    model: ModelOut = Field(description="The model this worker serves now.")
    others_signalled: bool = Field(description="The other workers were told to reload too (several workers).")


def forward_reload(pids: Sequence[int | None]) -> None:
    """SIGHUP to each worker (the supervisor's side): each one reloads its model in place."""
    for pid in pids:
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:  # a worker that has just exited: the supervisor replaces it, and it loads anew
            continue
    log.info("SIGHUP forwarded to %d worker(s): reloading the model", sum(p is not None for p in pids))


def _supervisor() -> int | None:
    """The pid of the digitlab supervisor that started this worker, or None (one process, or another parent)."""
    try:
        pid = int(os.environ.get(SUPERVISOR_ENV, ""))
    except ValueError:
        return None
    return pid if pid == os.getppid() else None


class Reloader:
    """One worker's reloads: one at a time; from the route, from SIGHUP, or kept for after the start."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending = False  # a SIGHUP came before the app had started
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def reload(self) -> tuple[str, ModelOut, str | None]:
        """(status, the model served now, the previous run id); ReloadFailed (old model kept) when it fails."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            old = self.service.model
            try:
                predictor, model = await anyio.to_thread.run_sync(self.service._load)
            except Exception as e:
                kept = f"still serving {old.run}" if old is not None else "no model loaded yet"
                log.error("reload failed, %s: %s", kept, one_line(e),  # the log keeps the paths: the operator's
                          extra={"fields": {"pid": os.getpid()}})  # fmt: skip
                raise ReloadFailed(f"reload failed, {kept}: {public_message(e)}") from None
            if old is not None and model == old:
                return "unchanged", old, old.run
            self.service.predictor, self.service.model, self.service.error = predictor, model, None
            info = self.service.metrics.model_info
            if old is not None:
                info.labels(old.run, old.backend, str(old.preset)).set(0)
            info.labels(model.run, model.backend, str(model.preset)).set(1)
            log.info("model reloaded", extra={"fields": {"run": model.run, "previous": old.run if old else None,
                                                         "checkpoint_sha256": model.checkpoint_sha256,
                                                         "pid": os.getpid()}})  # fmt: skip
            return "reloaded", model, old.run if old else None

    def on_signal(self, signum: int, frame: Any) -> None:
        """The SIGHUP handler (in the main thread): hand the reload to the event loop, or keep it for the start."""
        loop = self.loop
        if loop is None or loop.is_closed():
            self.pending = True
            return
        loop.call_soon_threadsafe(self._spawn)

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self._quiet_reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quiet_reload(self) -> None:
        with suppress(ReloadFailed):  # logged in one line; the old model serves on
            await self.reload()


def _install_sighup(reloader: Reloader) -> None:
    if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, reloader.on_signal)


def add_reload_routes(app: FastAPI, service: Service, settings: ApiSettings) -> None:
    """POST /v1/admin/reload on `app` (behind the API key; 403 without one) and the SIGHUP handler."""
    reloader = Reloader(service)
    app.state.reloader = reloader
    key = None if settings.no_auth else settings.api_key
    auth = key_dependencies(key)
    statuses = (401, 403, 409) if key else (403,)
    docs = {**ERROR_DOCS, 403: "The server has no API key: admin routes are refused.",
            409: "The run cannot be loaded; the model served before still answers."}  # fmt: skip

    @app.post("/v1/admin/reload", response_model=ReloadOut, dependencies=auth, tags=["admin"],
              responses={s: {"model": ErrorResponse, "description": docs[s]} for s in statuses},
              summary="Re-read the served run directory and swap the model in (every worker)")  # fmt: skip
    async def reload_model() -> ReloadOut:
        """Loads the run the server was started on (a symlink followed anew), warms it up and swaps it in;
        requests already running finish on the old model. With several workers, the others follow."""
        if key is None:
            raise Forbidden("admin routes need an API key: start the server with --api-key (or $DIGITLAB_API_KEY)")
        status, model, previous = await reloader.reload()
        supervisor = _supervisor()
        if supervisor is not None:
            os.kill(supervisor, signal.SIGHUP)  # it forwards to every worker; this one finds its model unchanged
        return ReloadOut(status=status, previous=previous, model=model,  # type: ignore[arg-type]
                         others_signalled=supervisor is not None)  # fmt: skip

    _install_sighup(reloader)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI):  # noqa: ANN202
        async with inner(a) as state:
            reloader.loop = asyncio.get_running_loop()
            if reloader.pending:  # SIGHUP during the start: the model loaded may already be the old one
                reloader.pending = False
                reloader._spawn()
            yield state
            reloader.loop = None

    app.router.lifespan_context = lifespan
