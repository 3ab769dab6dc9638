"""REST API HTTP/1.1 protocol: uvicorn's httptools protocol with bounded request heads and a drain on shutdown.

Bounded heads and a head deadline, JSON errors, a lingering close after refusals, and a drain of idle keep-alive
connections on shutdown.
"""

# uvicorn's httptools protocol (the one `uvicorn[standard]` runs) puts no bound on a request head: httptools
# concatenates a header value until it ends, so four 64 MiB headers or 10,000 headers are read whole, and a
# connection that sends its head one byte at a time is kept for ever. This subclass counts the bytes fed to the
# parser while a head is arriving (and the fields the parser reports), refuses with 431 past the limits, and
# answers 408 when a head takes longer than `head_timeout`. Its refusals are JSON in the API's error shape, sent
# with a lingering close: the rest of what the client sends is read and dropped for a moment, so that closing
# does not reset the connection before the client has read the answer.
#
# On shutdown uvicorn closes idle keep-alive connections at once; a request the client had already sent on one
# then meets a closed socket. Here an idle connection stays open for `drain_grace` seconds: a request that
# arrives meanwhile is served with "Connection: close". (The body deadline is the app's: see BodyLimitMiddleware.)

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from digitlab.serving.errors import raw_error

__all__ = ["GuardedHttpToolsProtocol", "ProtocolLimits"]


@dataclass(frozen=True)
class ProtocolLimits:
    """Limits on the HTTP/1.1 request head and on connection timing."""

    head_bytes: int = 32 * 1024  # request line and headers together
    head_fields: int = 100  # header fields
    head_timeout: float = 10.0  # seconds from connecting, or from a request's first byte, to the end of its head
    linger: float = 2.0  # seconds a refused connection keeps reading (and dropping) before it closes
    drain_grace: float = 1.0  # on shutdown, seconds an idle keep-alive connection waits for a request on its way


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a head over the limits."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HttpToolsProtocol within `ProtocolLimits` (pass them with functools.partial as uvicorn's `http`)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        limits: ProtocolLimits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits or ProtocolLimits()
        self._in_head = True  # between requests, or inside a request's head
        self._head_fed = 0  # bytes given to the parser since this head began
        self._head_size = 0  # bytes of target and fields the parser has reported
        self._head_fields = 0
        self._heads_done = 0
        self._refusal: tuple[int, str, str, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._lingering = False
        self._draining = False

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()
        if getattr(self.server_state, "draining", False):  # accepted from the backlog while draining
            self.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # after a refusal: read and dropped until the linger ends
        if not self._in_head:
            super().data_received(data)
            return
        room = self.limits.head_bytes - self._head_fed
        self._head_fed += len(data)
        if len(data) <= room:
            super().data_received(data)
            return
        # More than the head may hold: feed what fits; only a head that ends within it lets the rest through.
        room = max(room, 0)
        heads = self._heads_done
        super().data_received(data[:room])
        if self._lingering or self.transport.is_closing():
            return
        if self._heads_done == heads:
            self._refuse(431, "Request Header Fields Too Large", "request_header_too_large",
                         f"request head over {self.limits.head_bytes:,} bytes")  # fmt: skip
            return
        self.data_received(data[room:])

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_head(len(url), 0)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_head(len(name) + len(value) + 4, 1)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_done += 1
        self._head_fed = self._head_size = self._head_fields = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed: the server is stopping

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # what follows is the next request's head

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.pipeline and not self.transport.is_closing():
            self._linger()  # answered before the whole body arrived (a refusal): the rest is not read

    # ------------------------------------------------------------------ refusals

    def send_400_response(self, msg: str) -> None:  # uvicorn calls this when the parser fails
        status, reason, code, message = self._refusal or (400, "Bad Request", "bad_request", "invalid HTTP request")
        self._refusal = None
        self._refuse(status, reason, code, message)

    def _count_head(self, size: int, fields: int) -> None:
        self._head_size += size
        self._head_fields += fields
        if self._head_fields > self.limits.head_fields:
            self._refusal = (431, "Request Header Fields Too Large", "request_header_too_large",
                             f"more than {self.limits.head_fields} header fields")  # fmt: skip
        elif self._head_size > self.limits.head_bytes:
            self._refusal = (431, "Request Header Fields Too Large", "request_header_too_large",
                             f"request head over {self.limits.head_bytes:,} bytes")  # fmt: skip
        if self._refusal is not None:
            raise _Refused  # httptools stops and raises HttpParserCallbackError: uvicorn calls send_400_response

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self._lingering or self.transport.is_closing():
            return
        if self._head_fed == 0:  # nothing sent at all: close quietly (a 408 could cross a request on its way)
            self.transport.close()
            return
        self._refuse(408, "Request Timeout", "request_timeout",
                     f"the request head did not arrive within {self.limits.head_timeout:g} s")  # fmt: skip

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        if self.transport.is_closing() or self._lingering:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if self._in_head or cycle.response_started:  # an earlier request's answer is due first, or under way
                cycle.keep_alive = False
                self._lingering = True
                return
            cycle.disconnected = True  # this request's own body is malformed: its app reads a disconnect
            cycle.message_event.set()
        self.transport.write(raw_error(status, reason, code, message))
        self._linger()

    def _linger(self) -> None:
        """Stop answering; read and drop what the client still sends for a moment, then close."""
        self._lingering = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(self.limits.linger, self.transport.close)

    # ------------------------------------------------------------------ shutdown

    def shutdown(self) -> None:
        """Called by the server when it stops: finish what was sent, then close."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif not (self._in_head and self._head_fed):  # idle: a request may already be on its way
            self.loop.call_later(self.limits.drain_grace, self._close_if_idle)
        # else a head is arriving: it is answered with "Connection: close" (or refused when it stalls)

    def _close_if_idle(self) -> None:
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy or (self._in_head and self._head_fed) or self.transport.is_closing():
            return
        if _unread_bytes(self.transport):  # a request the loop has not read yet: closing now would reset it
            self.loop.call_later(self.limits.drain_grace, self._close_if_idle)
            return
        self.transport.close()


def _unread_bytes(transport: asyncio.Transport) -> int:
    """Bytes waiting in the connection's receive buffer (0 when that cannot be told)."""
    sock = transport.get_extra_info("socket")
    try:
        import fcntl  # POSIX only; elsewhere the drain falls back to its grace period alone
        import termios

        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (ImportError, AttributeError, OSError, ValueError):
        return 0
