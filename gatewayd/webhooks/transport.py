"""The webhook sender's HTTP/1.1 client: keep-alive connections per endpoint, nothing else.

Why not aiohttp's ClientSession (or httpcore): a webhook request is always the same
shape (one POST of bytes we made, or a Kannel GET; the answer's status is all we use),
and aiohttp's per-request machinery (URL and header objects, the connector's
bookkeeping, the response object and its stream) was ~24 % of the sender's CPU. This
client writes a prebuilt head and the body in one write, and reads the answer with
httptools (llhttp, the parser aiohttp's C extension uses) on a plain asyncio Protocol,
keeping no body (README "Webhooks", "Figures": CPU a request here, aiohttp and httpcore).

What it keeps of the old client: http and https (a verifying context, the URL's name as
SNI and as the name the certificate is checked against), Host from the URL, Basic auth
from its userinfo, no cookies, no proxy, redirects not followed (a 3xx is a status like
any other), a total timeout a request (connect included), and the target check at
connect time: addresses come from the guarded resolver (gatewayd.webhooks.targets),
which refuses a name with any private answer, and the connection goes to exactly those
addresses (no DNS rebinding). Connections are kept alive up to the endpoint's
concurrency; one closed by the server while idle is dropped, and a request that fails
on a reused connection before any byte of an answer is sent once more on a new one
(events are at least once, with ids). Answers are read by Content-Length, chunked or to
the connection's close; a body past BODY_CAP is not read further: its status stands and
the connection is closed.

Errors are named as aiohttp named them (``ClientConnectorError: Cannot connect to host
...``, ``ServerDisconnectedError: Server disconnected``), so that dead letters' last
errors read as before.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools
from aiohttp.abc import AbstractResolver

# Answers' bodies are not kept; past this much one is not read further either.
BODY_CAP = 1 << 20
# Resolved addresses are reused this long for new connections (aiohttp's ttl_dns_cache).
DNS_TTL_S = 60.0


class ClientError(Exception):
    """A request that got no complete answer (connection, protocol)."""


class ClientConnectorError(ClientError):
    """No connection could be made."""


class ClientConnectorCertificateError(ClientConnectorError):
    """The server's certificate was not accepted."""


class ServerDisconnectedError(ClientError):
    def __init__(self, message: str = "Server disconnected") -> None:
        super().__init__(message)


class ClientOSError(ClientError):
    """The connection failed while a request was on it."""


class ClientResponseError(ClientError):
    """The answer was not HTTP/1.x we could read."""


class _Stale(Exception):
    """A reused connection failed before any byte of an answer: try a new one."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause


class Origin:
    """What a URL says about where and how to connect, and the head of its requests."""

    __slots__ = ("auth", "host", "host_header", "key", "port", "tls")

    def __init__(self, url: str) -> None:
        p = urlsplit(url)
        if p.scheme not in ("http", "https") or not p.hostname:
            raise ValueError(f"{url!r}: not an http(s) URL")
        self.tls = p.scheme == "https"
        self.host = p.hostname
        default = 443 if self.tls else 80
        self.port = p.port or default
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = name if self.port == default else f"{name}:{self.port}"
        self.auth = ""
        if p.username is not None:
            pair = f"{unquote(p.username)}:{unquote(p.password or '')}"
            self.auth = "Basic " + base64.b64encode(pair.encode("latin-1")).decode()
        self.key = (p.scheme, self.host, self.port)


def target_of(url: str) -> str:
    """The request target (path and query, as written) of an http(s) URL."""
    p = urlsplit(url)
    return (p.path or "/") + (f"?{p.query}" if p.query else "")


class _Conn(asyncio.Protocol):
    """One connection; one request on it at a time (``exchange``)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.got = 0  # bytes of the answer received
        self.status = 0
        self.headers_done = False
        self.sized = False  # Content-Length or chunked: the answer's end is known
        self.body = 0
        self.keep = True
        self.closed = False
        self.reused = False

    # asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        w = self.waiter
        if w is None or w.done():  # bytes nobody asked for: the connection is not reusable
            self.keep = False
            self._abort()
            return
        self.got += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            self._fail(ClientResponseError(f"bad answer: {e}"))

    def eof_received(self) -> bool | None:
        return None  # close: connection_lost completes or fails the request

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        w = self.waiter
        if w is None or w.done():
            return
        if self.headers_done and not self.sized and exc is None:
            # A body delimited by the connection's close: this was its end.
            self._finish()
            return
        if self.got == 0 and self.reused:
            w.set_exception(_Stale(exc or ServerDisconnectedError()))
        elif exc is None:
            w.set_exception(ServerDisconnectedError())
        else:
            w.set_exception(ClientOSError(*getattr(exc, "args", (str(exc),))))

    # httptools callbacks ----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        if (n == 14 and name.lower() == b"content-length") or (
                n == 17 and name.lower() == b"transfer-encoding"):
            self.sized = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body += len(body)
        if self.body > BODY_CAP:  # the status stands; the rest is not read
            self.keep = False
            self._finish()

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self.status, self.headers_done, self.sized, self.body = 0, False, False, 0
            return
        self.keep = self.keep and self.parser.should_keep_alive()
        self._finish()

    # ------------------------------------------------------------------------------
    def _finish(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(self.status)

    def _fail(self, e: BaseException) -> None:
        w = self.waiter
        self.keep = False
        if w is not None and not w.done():
            w.set_exception(e)
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def exchange(self, data: bytes) -> int:
        """Send one request; its answer's status once the answer has been read."""
        t = self.transport
        if t is None or self.closed or t.is_closing():
            raise _Stale(ServerDisconnectedError())
        self.got = self.status = self.body = 0
        self.headers_done = self.sized = False
        w: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiter = w
        t.write(data)
        try:
            status = await w
        except BaseException:
            self.keep = False
            self._abort()
            raise
        finally:
            self.waiter = None
        return status


class Pool:
    """Keep-alive connections to one origin for one endpoint: up to ``size`` kept idle
    (its concurrency: more requests at once than that get connections of their own,
    closed after; none ever waits here for another's)."""

    def __init__(self, origin: Origin, *, size: int, resolver: AbstractResolver,
                 tls: ssl.SSLContext | None) -> None:
        self.origin = origin
        self.size = max(1, size)
        self.resolver = resolver
        self.tls = tls if origin.tls else None
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()
        self._addresses: list[dict[str, Any]] = []
        self._resolved_at = 0.0
        self.connections_made = 0

    async def request(self, data: bytes) -> int:
        """``data`` (a whole request) sent on a kept or new connection: the answer's status."""
        conn = None
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                conn = c
                break
        if conn is None:
            conn = await self._connect()
        else:
            conn.reused = True
        self.busy.add(conn)
        status: int
        try:
            try:
                status = await conn.exchange(data)
            except _Stale:
                self.busy.discard(conn)
                conn = await self._connect()
                self.busy.add(conn)
                try:
                    status = await conn.exchange(data)
                except _Stale as e:  # a new connection: not stale, failed
                    raise e.cause from None
        finally:
            self.busy.discard(conn)
        if conn.keep and not conn.closed and len(self.idle) < self.size:
            self.idle.append(conn)
        elif not conn.closed:
            conn.transport.close()  # type: ignore[union-attr]
        return status

    def forget(self, conn: _Conn) -> None:
        """A connection closed (by the server, idle, or after an error)."""
        if conn in self.idle:
            self.idle.remove(conn)

    async def _resolve(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if not self._addresses or now - self._resolved_at > DNS_TTL_S:
            o = self.origin
            # The guarded resolver raises targets.PrivateTarget (an OSError) for a
            # name with any private answer; it propagates as it is.
            self._addresses = [dict(h) for h in await self.resolver.resolve(
                o.host, o.port, family=socket.AF_UNSPEC)]
            self._resolved_at = now
        return self._addresses

    async def _connect(self) -> _Conn:
        o = self.origin
        addresses = await self._resolve()
        loop = asyncio.get_running_loop()
        error: OSError | None = None
        for a in addresses:
            try:
                _t, conn = await loop.create_connection(
                    lambda: _Conn(self), a["host"], a["port"], family=a["family"],
                    proto=a.get("proto", 0), flags=a.get("flags", 0), ssl=self.tls,
                    server_hostname=o.host if self.tls is not None else None)
            except ssl.SSLCertVerificationError as e:
                raise ClientConnectorCertificateError(
                    f"Cannot connect to host {o.host}:{o.port} ssl:True "
                    f"[{type(e).__name__}: {e.args!r}]") from e
            except OSError as e:
                error = e
                continue
            self.connections_made += 1
            return conn
        self._addresses = []  # none answered: ask again next time
        ssl_text = "True" if self.tls is not None else "default"
        raise ClientConnectorError(
            f"Cannot connect to host {o.host}:{o.port} ssl:{ssl_text} "
            f"[{error.strerror or error if error else 'no address'}]") from error

    def close(self) -> None:
        for c in (*self.idle, *self.busy):
            if c.transport is not None:
                c.transport.abort()
        self.idle.clear()
        self.busy.clear()


class Client:
    """One endpoint's connections (a pool an origin: a Kannel URL's escapes may name
    another host) and how its requests' heads are made."""

    def __init__(self, *, size: int, resolver: AbstractResolver, ca_file: str = "",
                 user_agent: str = "gatewayd-webhooks") -> None:
        self.size = size
        self.resolver = resolver
        self.ca_file = ca_file
        self.user_agent = user_agent
        self.pools: dict[tuple[str, str, int], Pool] = {}

    def pool(self, origin: Origin) -> Pool:
        p = self.pools.get(origin.key)
        if p is None:
            p = self.pools[origin.key] = Pool(
                origin, size=self.size, resolver=self.resolver,
                tls=tls_context(self.ca_file) if origin.tls else None)
        return p

    def head(self, method: str, origin: Origin, target: str,
             headers: dict[str, str]) -> str:
        """A request's head up to (not including) its Content-Length and final CRLF."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {origin.host_header}",
                 "Accept: */*", f"User-Agent: {self.user_agent}"]
        if origin.auth:
            lines.append(f"Authorization: {origin.auth}")
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        return "\r\n".join(lines) + "\r\n"

    def close(self) -> None:
        for p in self.pools.values():
            p.close()
        self.pools.clear()


_system_tls: ssl.SSLContext | None = None


def tls_context(ca_file: str = "") -> ssl.SSLContext:
    """A verifying context (the URL's name checked against the certificate): ``ca_file``'s
    CAs, or the system's (one context for every endpoint without a ca_file: loading the
    system's CAs is milliseconds and a megabyte)."""
    global _system_tls
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    if _system_tls is None:
        _system_tls = ssl.create_default_context()
    return _system_tls
