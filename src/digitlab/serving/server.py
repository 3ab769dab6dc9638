"""REST API server: uvicorn with the guarded protocol, one or several workers, and a drain on SIGTERM."""

# What SIGTERM does (uvicorn's own shutdown closes the listening socket at once, which resets every connection
# the kernel had already accepted but the server had not yet taken, and closes idle keep-alive connections that
# may have a request on its way):
#   1. the listening socket stops listening only after the connections already waiting in its backlog have been
#      taken (a new connection is then refused at connect);
#   2. requests in progress finish and are answered with "Connection: close"; idle connections wait
#      `drain_grace` s for a request already sent (GuardedHttpToolsProtocol.shutdown);
#   3. after `timeout_graceful_shutdown` s what is still running is cancelled; the process exits 0.
# With several workers the supervisor closes its copy of the shared socket first, so that the last worker to
# close its own is the one that stops the listening, after taking its backlog.

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

from digitlab.serving.protocol import GuardedHttpToolsProtocol, ProtocolLimits
from digitlab.serving.reload import SUPERVISOR_ENV, forward_reload

__all__ = ["DrainingServer", "server_config", "serve"]

log = logging.getLogger("uvicorn.error")


class DrainingServer(uvicorn.Server):
    """uvicorn's Server whose shutdown drains: see the notes at the top of this module."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("Shutting down: draining connections")
        self.server_state.draining = True  # type: ignore[attr-defined]  # read by GuardedHttpToolsProtocol
        waiting = self._stop_listening(sockets or [])
        for connection in list(self.server_state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        for conn in waiting:
            try:
                await loop.connect_accepted_socket(self._protocol, conn, ssl=self.config.ssl)
            except OSError:  # the client gave up meanwhile
                conn.close()
        await asyncio.sleep(0.1)
        try:
            await asyncio.wait_for(self._wait_tasks_to_complete(), timeout=self.config.timeout_graceful_shutdown)
        except asyncio.TimeoutError:
            log.error("Cancel %s running task(s), timeout graceful shutdown exceeded", len(self.server_state.tasks))
            for t in self.server_state.tasks:
                t.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()

    def _stop_listening(self, sockets: list[socket.socket]) -> list[socket.socket]:
        """Stop accepting; return the connections the kernel had already accepted (taken before the socket closes:
        closing a listening socket resets what waits in its backlog)."""
        listeners = [socket.socket(fileno=os.dup(s.fileno())) for srv in self.servers for s in srv.sockets or ()]
        for srv in self.servers:
            srv.close()
        for sock in sockets:
            sock.close()
        waiting: list[socket.socket] = []
        for listener in listeners:  # no await in this loop: nothing else runs between the last accept and close
            listener.setblocking(False)
            while True:
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # an error on one pending connection, not on the listener: take the next one
                    continue
                waiting.append(conn)
            listener.close()
        if waiting:
            log.info("Serving %d connection(s) accepted before the shutdown", len(waiting))
        return waiting

    def _protocol(self) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop
        )


class DrainingProcess(multiprocess.Process):
    """A uvicorn worker process that runs a DrainingServer."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


class Supervisor(multiprocess.Multiprocess):
    """uvicorn's supervisor of several workers; on SIGINT/SIGTERM it closes its copy of the shared socket first."""

    def run(self) -> None:
        # uvicorn's supervisor makes its workers by the module's name `Process` (at start, on restarts, on
        # SIGTTIN); for as long as it runs, that name stands for DrainingProcess. Only this process is affected:
        # each worker unpickles its DrainingProcess by its own class.
        plain, multiprocess.Process = multiprocess.Process, DrainingProcess  # type: ignore[misc]
        os.environ[SUPERVISOR_ENV] = str(os.getpid())  # a worker's admin reload signals it (digitlab.serving.reload)
        try:
            super().run()
        finally:
            multiprocess.Process = plain  # type: ignore[misc]

    def handle_int(self) -> None:
        self._close_sockets()
        super().handle_int()

    def handle_term(self) -> None:
        self._close_sockets()
        super().handle_term()

    def handle_hup(self) -> None:  # each worker reloads its model in place (uvicorn's would restart them all)
        forward_reload([p.pid for p in self.processes])

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()

    @property
    def failed_at_startup(self) -> bool:
        return any(p.exitcode == STARTUP_FAILURE for p in self.processes)


def server_config(app: Any, *, limits: ProtocolLimits | None = None, **options: Any) -> uvicorn.Config:
    """uvicorn's Config for `app` (an ASGI app, or an import string with factory=True) with the guarded protocol."""
    http = functools.partial(GuardedHttpToolsProtocol, limits=limits or ProtocolLimits())
    return uvicorn.Config(app, http=http, **options)  # type: ignore[arg-type]


def serve(config: uvicorn.Config) -> int:
    """Run until SIGINT/SIGTERM; the exit status: 0, or uvicorn's STARTUP_FAILURE (3) when a worker could not
    start (its one-line reason is in the log)."""
    if config.workers > 1:
        supervisor = Supervisor(config, sockets=[config.bind_socket()])
        supervisor.run()
        return STARTUP_FAILURE if supervisor.failed_at_startup else 0
    server = DrainingServer(config)
    try:
        server.run()
    except SystemExit as e:  # uvicorn's way of saying that startup failed (or the CLI's SIGTERM handler's exit 0)
        return e.code if isinstance(e.code, int) else STARTUP_FAILURE
    except KeyboardInterrupt:  # Ctrl+C: uvicorn re-raises SIGINT once it has shut down
        return 0
    return 0 if server.started else STARTUP_FAILURE
