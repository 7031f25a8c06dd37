"""The public short-link redirector: ``GET /<code>`` -> 302, and nothing else.

It listens on its own address (``[links] listen``), apart from the API, because it is
meant to face the internet: it serves no other route, reads no key, sends no body,
sets ``Cache-Control: no-store`` (so every click reaches us) and ``Referrer-Policy:
no-referrer``. Unknown, malformed and expired codes answer 404 (or a 302 to
``links.fallback_url``); methods other than GET and HEAD 405; a malformed request 400
and the connection is closed. Request heads are capped at 16 KB and must arrive within
10 s; an idle keep-alive connection is closed after 30 s; past ``links.max_connections``
open connections a new one is answered 503 and closed (gatewayd.http.limits).

HTTP is parsed by httptools (llhttp, the parser uvicorn runs on) under a plain asyncio
protocol, and each answer is one write: the API's aiohttp stack cost ~3x the CPU a
request here (bench/redirect.py), and this endpoint takes every click of every campaign.

Requests arriving together share one Redis round trip: each is a lua/click.lua call in
one pipeline (the lookup of the target and the click record in the same step), sent as
soon as the event loop is free. What follows a click (its ``clicked`` event through the
ledger, the funnel's clicked/clicks, the recipient's cooling-off streak reset) is
written after the answers, at the head of the next batch's pipeline (one round trip a
batch under load), or on its own once no request waits. Link previews (HEAD, or a known
preview User-Agent) are counted on the link (``previews``) and in the funnel, and are
not clicks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, cast
from urllib.parse import quote

import httptools
from redis.exceptions import NoScriptError

from gatewayd.campaigns.funnel import Tally
from gatewayd.campaigns.links import CODE_RE, Click, PreviewDetector, parse_click
from gatewayd.http.limits import ConnectionCap
from gatewayd.http.server import parse_listen
from gatewayd.model import mask_number
from gatewayd.ops import metrics
from gatewayd.pipeline.events import Ledger
from gatewayd.store import fastpipe
from gatewayd.store.connection import Redis, load_script
from gatewayd.store.keys import Keys

log = logging.getLogger("gatewayd.links")

_MAX_BATCH: Final = 256
_MAX_HEAD: Final = 16 * 1024  # request line and headers (and a body nobody should send)
_HEAD_TIMEOUT_S: Final = 10.0  # to send a request's head once started (slow clients)
_IDLE_TIMEOUT_S: Final = 30.0  # keep-alive between requests
_URL_SAFE: Final = ":/?#[]@!$&'()*+,;=%~-._"
_COMMON: Final = (b"Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\n"
                  b"Server: gatewayd\r\nContent-Length: 0\r\n")
_KEEP: Final = _COMMON + b"\r\n"
_CLOSE: Final = _COMMON + b"Connection: close\r\n\r\n"

_Waiting = tuple["asyncio.Future[Click] | None", bytes, bool]


def _plain(status: bytes, *, close: bool, allow: bool = False, retry: bool = False) -> bytes:
    """An answer without a body (404, 405, 400, 503)."""
    extra = (b"Allow: GET, HEAD\r\n" if allow else b"") + (b"Retry-After: 5\r\n" if retry
                                                          else b"")
    return b"".join((b"HTTP/1.1 ", status, b"\r\n", extra, _CLOSE if close else _KEEP))


class _Conn(asyncio.Protocol):
    """One client connection: answers in request order (pipelined requests too)."""

    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.ua = b""
        self.head_bytes = 0
        # (look-up or None for a ready answer, the answer or the method, keep-alive)
        self.queue: deque[_Waiting] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._arm(_HEAD_TIMEOUT_S)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.queue.append((None, _plain(b"400 Bad Request", close=True), False))
            self._flush()

    # httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url, self.ua, self.head_bytes = b"", b"", 0
        self._arm(_HEAD_TIMEOUT_S)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > 2048:
            raise httptools.HttpParserError("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > _MAX_HEAD:
            raise httptools.HttpParserError("head too large")
        if len(name) == 10 and name.lower() == b"user-agent":
            self.ua = value

    def on_body(self, body: bytes) -> None:
        self.head_bytes += len(body)
        if self.head_bytes > _MAX_HEAD:
            raise httptools.HttpParserError("body too large")

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep = self.parser.should_keep_alive()
        srv = self.server
        if method not in (b"GET", b"HEAD"):
            self.queue.append((None, _plain(b"405 Method Not Allowed", allow=True,
                                            close=not keep), keep))
        else:
            url = self.url
            code = url[1:].decode("latin-1") if url.startswith(b"/") else ""
            if not CODE_RE.fullmatch(code):
                self.queue.append((None, srv.unknown(not keep), keep))
            else:
                preview = srv.detector.is_preview(method.decode("ascii"),
                                                  self.ua.decode("latin-1"))
                fut = srv.lookup(code, preview)
                self.queue.append((fut, method, keep))
                fut.add_done_callback(self._ready)
        self._arm(_IDLE_TIMEOUT_S)
        self._flush()

    def _ready(self, _fut: asyncio.Future[Click]) -> None:
        self._flush()

    def _flush(self) -> None:
        """Write the answers that are ready, in request order."""
        q = self.queue
        while q:
            fut, what, keep = q[0]
            if fut is not None:
                if not fut.done():
                    return
                what = self.server.answer(fut, not keep)
            q.popleft()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(what)
            if not keep:
                q.clear()
                self._close()
                return


class LinkServer:
    def __init__(self, listen: str, redis: Redis, keys: Keys, ledger: Ledger, *,
                 preview_agents: list[str] | None = None, fallback_url: str = "",
                 clock: Callable[[], float] = time.time, max_connections: int = 4096) -> None:
        self.host, self._port = parse_listen(listen)
        self.max_connections = max_connections
        self.redis = redis
        self.keys = keys
        self.ledger = ledger
        self.fallback_url = fallback_url
        self.clock = clock
        self.detector = (PreviewDetector(preview_agents) if preview_agents
                         else PreviewDetector())
        self.script = load_script(redis, "click")
        self._pending: list[tuple[str, bool, asyncio.Future[Click]]] = []
        self._flushing = False
        self._after: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.counts = {k: metrics.LINK_REQUESTS.labels(k)
                       for k in ("click", "repeat", "preview", "unknown")}

    @property
    def port(self) -> int:
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            ConnectionCap(lambda: _Conn(self), self.max_connections, "links"),
            self.host or None, self._port, backlog=2048, reuse_address=True)
        log.info("links: listening", extra={"listen": f"{self.host}:{self.port}"})

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            if hasattr(server, "close_clients"):
                server.close_clients()
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                pass
        if self._after:
            await asyncio.gather(*self._after, return_exceptions=True)

    # Answers ---------------------------------------------------------------------------
    def answer(self, fut: asyncio.Future[Click], close: bool) -> bytes:
        try:
            click = fut.result()
        except Exception as e:  # Redis away: the visitor gets an error, not a hang
            log.warning("links: lookup failed: %s: %s", type(e).__name__, e)
            return _plain(b"503 Service Unavailable", close=close, retry=True)
        if not click.target:
            return self.unknown(close)
        self.counts["preview" if click.preview else "click" if click.first
                    else "repeat"].inc()
        return self._redirect(click.target, close)

    @staticmethod
    def _redirect(target: str, close: bool) -> bytes:
        # Targets are validated http(s) URLs without whitespace (campaigns.templates);
        # quote() keeps the header ASCII (a non-ASCII path or query is percent-encoded).
        location = quote(target, safe=_URL_SAFE).encode("ascii")
        return b"".join((b"HTTP/1.1 302 Found\r\nLocation: ", location, b"\r\n",
                         _CLOSE if close else _KEEP))

    def unknown(self, close: bool) -> bytes:
        self.counts["unknown"].inc()
        if self.fallback_url:
            return self._redirect(self.fallback_url, close)
        return _plain(b"404 Not Found", close=close)

    # Batched look-ups ------------------------------------------------------------------
    def lookup(self, code: str, preview: bool) -> asyncio.Future[Click]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Click] = loop.create_future()
        self._pending.append((code, preview, fut))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._start_flush)
        return fut

    def _start_flush(self) -> None:
        self._spawn(self._flush())

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._after.add(t)
        t.add_done_callback(self._after.discard)

    async def _flush(self) -> None:
        # The records of answered clicks ride in the next batch's pipeline (one round
        # trip a batch under load), or go on their own once nothing else is waiting.
        unwritten: list[tuple[list[Click], float]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                now = self.clock()
                try:
                    replies = await self._clicks(batch, repr(now), unwritten)
                except Exception as e:
                    for _c, _p, f in batch:
                        if not f.done():
                            f.set_exception(e)
                    continue
                finally:
                    unwritten = []
                clicks = [parse_click(code, preview, r)
                          for (code, preview, _f), r in zip(batch, replies, strict=True)]
                for (_c, _p, f), click in zip(batch, clicks, strict=True):
                    if not f.done():
                        f.set_result(click)
                unwritten.append((clicks, now))
            if unwritten:
                pipe = self.redis.pipeline(transaction=False)
                for clicks, now in unwritten:
                    self._record(pipe, clicks, now)
                if len(pipe):
                    await fastpipe.execute(pipe)
        except Exception as e:
            log.warning("links: click records failed: %s: %s", type(e).__name__, e)
        finally:
            self._flushing = False
            if self._pending:  # arrived while the last round trip was in flight
                self._flushing = True
                asyncio.get_running_loop().call_soon(self._start_flush)

    async def _clicks(self, batch: list[tuple[str, bool, asyncio.Future[Click]]],
                      now_text: str, unwritten: list[tuple[list[Click], float]]
                      ) -> list[Any]:
        """click.lua for each request, by EVALSHA (the source is not sent each time),
        after the records of the clicks answered before (their events, funnel counts,
        cooling resets). After a Redis restart (NOSCRIPT) the script is loaded and the
        look-ups sent again (those calls failed before recording anything; the records
        went through and are not sent twice)."""
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            if attempt == 1:
                for clicks, now in unwritten:
                    self._record(pipe, clicks, now)
            first = len(pipe)
            link, counts, sha = self.keys.link, self.keys.link_counts, self.script.sha
            for code, preview, _f in batch:
                pipe.execute_command("EVALSHA", sha, 2, link(code), counts(code), now_text,
                                     "p" if preview else "c")
            try:
                return (await fastpipe.execute(pipe))[first:]
            except NoScriptError:
                if attempt == 2:
                    raise
                await self.redis.script_load(self.script.script)
        raise AssertionError("unreachable")

    def _record(self, pipe: Any, clicks: list[Click], now: float) -> None:
        """Events, funnel and cooling-off of a batch's clicks, into ``pipe``."""
        tally = Tally()
        for c in clicks:
            if not c.target or not c.msg_id:
                continue
            if c.preview:
                if c.funnel_key:
                    tally.add(c.funnel_key, c.variant, "previews")
                continue
            if c.funnel_key:
                tally.add(c.funnel_key, c.variant, "clicks")
                if c.first:
                    tally.add(c.funnel_key, c.variant, "clicked")
            if c.recipient:
                # A click: the recipient reads these messages; the cooling-off streak of
                # unclicked link messages starts again.
                pipe.execute_command("HSET", self.keys.marketing_of(c.recipient), "n", 0)
            event: dict[str, Any] = {"id": c.msg_id, "state": "clicked", "at": now,
                                     "clicks": c.clicks, "first": 1 if c.first else 0}
            for k, v in (("campaign", c.campaign), ("variant", c.variant),
                         ("template", c.template),
                         ("to", c.masked or (mask_number("+" + c.recipient)
                                             if c.recipient else ""))):
                if v:
                    event[k] = v
            self.ledger.event_only(pipe, event)
        tally.flush(pipe)
