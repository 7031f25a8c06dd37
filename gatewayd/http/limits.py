"""Limits of the HTTP listeners (the API and the redirector): a cap on open connections,
time-outs for request bodies, and a rate-limited log of malformed requests.

What each limit is for (README "HTTP API: authentication and limits"):

* **Connections.** ``ConnectionCap`` wraps a listener's protocol factory: past
  ``max_connections`` open connections a new one is answered ``503`` (with
  ``Retry-After``) and closed at once, so a client opening thousands of idle sockets
  holds at most the cap of the daemon's file descriptors, and the connections already
  open keep being served. (asyncio cannot pause accepting; answering and closing costs
  one write and frees the descriptor at once.)
* **Request heads and idle keep-alive** (the API): aiohttp closes a connection that has
  not sent a complete request head within its keep-alive time-out of opening or of its
  previous answer, whatever it sent meanwhile; ``http.idle_timeout_s`` sets it, so a
  slowloris client that trickles a header a second is cut off after it. The redirector
  has its own head and idle timers (gatewayd.http.links).
* **Bodies.** ``read_body`` reads a JSON body whole within ``http.body_timeout_s``;
  ``chunks`` streams an upload, each chunk within it. Past it: 408, connection closed.
* **Malformed requests** are logged at WARNING by ``RateLimitedLog``: one line per kind
  per interval, with the count of the ones not logged, and never a traceback (a client
  sending junk must not fill the journal).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, cast

from aiohttp import web

from gatewayd.ops import metrics

_REFUSED_BODY: Final = (b'{"error": {"code": "too_many_connections", '
                        b'"message": "too many open connections; retry shortly"}}')
_REFUSED: Final = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                   b"Content-Type: application/json\r\nConnection: close\r\n"
                   b"Content-Length: " + str(len(_REFUSED_BODY)).encode() + b"\r\n\r\n"
                   + _REFUSED_BODY)


class RateLimitedLog:
    """WARNING lines for malformed requests, at most one per kind every ``every_s``; the
    next line says how many of that kind were not logged in between."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, kind: str, message: str, **extra: Any) -> None:
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.every_s:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            message = f"{message} (and {skipped} more like it in the last {self.every_s:.0f} s)"
        self.logger.warning(message, extra={"kind": kind, **extra})


class _Refuse(asyncio.Protocol):
    """A connection past the cap: one answer, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        t.write(_REFUSED)
        t.close()


class _Counted(asyncio.Protocol):
    """Forwards every call to the listener's own protocol; counts the connection open
    from connection_made to connection_lost (asyncio calls both or neither)."""

    __slots__ = ("__weakref__", "cap", "inner")

    def __init__(self, cap: ConnectionCap, inner: asyncio.Protocol) -> None:
        self.cap = cap
        self.inner = inner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.cap._connected(self)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cap._lost()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ConnectionCap:
    """A protocol factory for ``loop.create_server``: the listener's own factory while
    fewer than ``limit`` connections are open (or being opened), a refusal past it."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int,
                 listener: str) -> None:
        self.factory = factory
        self.limit = limit
        self.open = 0
        # Accepted but not yet connected (asyncio calls connection_made a loop turn
        # after the factory): counted too, weakly, so one that never connects (accept
        # failed) does not hold a place for ever.
        self._opening: weakref.WeakSet[_Counted] = weakref.WeakSet()
        self._gauge = metrics.HTTP_CONNECTIONS.labels(listener)
        self._refused = metrics.HTTP_CONNECTIONS_REFUSED.labels(listener)

    def __call__(self) -> asyncio.Protocol:
        if self.open + len(self._opening) >= self.limit:
            self._refused.inc()
            return _Refuse()
        proto = _Counted(self, self.factory())
        self._opening.add(proto)
        return proto

    def _connected(self, proto: _Counted) -> None:
        self._opening.discard(proto)
        self.open += 1
        self._gauge.set(self.open)

    def _lost(self) -> None:
        self.open -= 1
        self._gauge.set(self.open)


class BodyTimeout(Exception):
    """The request body did not arrive within http.body_timeout_s."""


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The whole body (bounded by the app's client_max_size), within ``timeout_s``."""
    if request.content.is_eof():  # all of it came with the head: no timer needed
        return await request.read()
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise BodyTimeout from None


async def chunks(request: web.Request, timeout_s: float,
                 size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """A streamed body, each chunk within ``timeout_s`` (a stalled upload ends)."""
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await request.content.read(size)
        except TimeoutError:
            raise BodyTimeout from None
        if not chunk:
            return
        yield chunk
