"""The fast lane: ``POST /v1/messages`` served under a plain asyncio protocol on the API's
port, every other request handed to aiohttp on the same connection.

Why: aiohttp's own request cycle (protocol, parser glue, ``Request``, router, middleware
chain, ``Response``) costs ~38 us of CPU a request on the machine of issue 17, against
~4.6 us for httptools under a plain protocol (``python -m bench http_floor``; README
"HTTP intake: where a request's CPU goes"); one message a request, that is most of the
intake's budget. Only the intake route is worth it: every other route keeps aiohttp.

How a connection goes:

* Each connection the API accepts starts here (under the connection cap,
  gatewayd.http.limits.ConnectionCap, which wraps this factory). A request whose head
  is complete is parsed by httptools (llhttp, the parser aiohttp's C extension uses
  too). It is served here only when it is plainly ours: ``POST /v1/messages`` exactly,
  no ``Transfer-Encoding`` (chunked), ``Upgrade``, ``Expect`` or ``Content-Encoding``,
  a ``Content-Length`` within ``http.max_body_bytes``, a head under aiohttp's line
  limit. Anything else (another route or method, a chunked or compressed or too-large
  body, a head httptools refuses, bytes that are not HTTP) is **handed to aiohttp**:
  its request handler is made for this transport (what ``aiohttp.web.Server.__call__``
  makes for a new connection), told the connection is made, and given every byte
  received from that request's first byte on; from then on the connection is aiohttp's
  (this protocol forwards the transport's calls to it). So whatever aiohttp answers
  today (404/405, 413 before reading, 100-continue, 400 for a malformed request and
  the close, the chunked body's cap) it still answers, by its own code.
* What is served here answers as aiohttp's handler does, from the same code
  (``HttpServer.intake``, ``as_account``, ``failure``, ``count``): status, JSON body,
  ``Retry-After`` / ``WWW-Authenticate``, ``Content-Type``, ``Date``, ``Server`` and
  ``Connection`` as aiohttp writes them; the same metrics (route ``/v1/messages``) and
  log lines. Authentication first, then the draining check, then the body, like
  aiohttp's middleware and handler.
* Limits, as aiohttp applies them: a connection must send a complete request head
  within ``http.idle_timeout_s`` of opening or of its previous answer (slowloris), else
  it is closed; a body must arrive within ``http.body_timeout_s`` of its head being
  served, else 408 and close. Requests on a keep-alive connection (pipelined too) are
  served one after the other, answered in order; HTTP/1.0 and ``Connection: close``
  close after the answer. Reading pauses while a request is served and more than a
  body's worth waits behind it, and no request is started while the transport's
  buffer is full (``pause_writing``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, Protocol, cast

import httptools
import msgspec
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE

from gatewayd.http.answers import DRAINING, INTAKE_ROUTE, Answer, remote_of
from gatewayd.http.limits import BodyTimeout

if TYPE_CHECKING:
    from gatewayd.accounts.cache import Principal


class HttpServer(Protocol):
    """What the lane uses of gatewayd.http.server.HttpServer (which builds the lanes:
    the two modules do not import each other)."""

    fast_intake: bool
    max_body_bytes: int
    idle_timeout_s: float
    body_timeout_s: float
    keys_generation: int
    draining: bool

    def _authorized(self, header: str) -> bool: ...

    async def as_account(self, method: str, route: str, header: str, path: str,
                         transport: asyncio.BaseTransport | None
                         ) -> tuple[Principal | None, Answer | None]: ...

    async def intake(self, body: bytes, principal: Principal | None, path: str
                     ) -> Answer: ...

    def body_timeout(self, path: str, remote: str) -> Answer: ...

    def failure(self, exc: Exception, path: str) -> Answer: ...

    def count(self, route: str, method: str, status: int, started: float, path: str,
              transport: asyncio.BaseTransport | None) -> None: ...

# aiohttp refuses a request line or header line longer than this (its parser's
# max_line_size / max_field_size): a longer head goes to aiohttp, which answers it.
_MAX_HEAD: Final = 8190
_MAX_HEADERS: Final = 128  # aiohttp's max_headers: more, and aiohttp answers 400
_PATH: Final = INTAKE_ROUTE.encode()
# Headers that make a request aiohttp's (see the module docstring), by lower-case name.
_NOT_OURS: Final = frozenset({b"transfer-encoding", b"upgrade", b"expect",
                              b"content-encoding"})
_SERVER: Final = f"Server: {SERVER_SOFTWARE}\r\n".encode()
# http.turn_requests' default: requests started in one loop turn at most; the others
# start in the next turns, in order (Writes.start). Why: a flood from a few hundred
# keep-alive connections otherwise starts them all in one turn (~50-100 us of Python
# each), and everything else in the daemon's loop, codes on their way to the SMSC
# first, waits out that turn at each of its round trips (README "Where a code's time
# goes under the HTTP flood").
TURN_REQUESTS: Final = 32
_CT: Final = b"Content-Type: application/json\r\n"
# The fixed parts of an answer, made once: the status line with Content-Type, by
# (HTTP version, status); and, for the current second, Date, Server, Connection and
# the blank line, by (version, keep-alive). An answer is then one join of five pieces.
_heads: dict[tuple[bytes, int], bytes] = {}
_tails: dict[tuple[bytes, bool], bytes] = {}
_tails_second = -1


def encode_answer(answer: Answer, version: bytes, keep: bool) -> bytes:
    """The bytes of an answer, as aiohttp writes a JSON ``web.Response``."""
    global _tails_second
    status, doc, headers = answer
    head = _heads.get((version, status))
    if head is None:
        head = b"HTTP/%s %d %s\r\n%s" % (version, status,
                                         HTTPStatus(status).phrase.encode(), _CT)
        _heads[(version, status)] = head
    second = int(time.time())  # aiohttp's Date changes with the second too
    if second != _tails_second:
        _tails.clear()
        _tails_second = second
    tail = _tails.get((version, keep))
    if tail is None:
        parts = [f"Date: {rfc822_formatted_time()}\r\n".encode(), _SERVER]
        if keep:
            if version == b"1.0":
                parts.append(b"Connection: keep-alive\r\n")
        elif version == b"1.1":
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        tail = _tails[(version, keep)] = b"".join(parts)
    body = msgspec.json.encode(doc)
    extra = b"".join(f"{k}: {v}\r\n".encode("latin-1")
                     for k, v in headers.items()) if headers else b""
    return b"".join((head, b"Content-Length: %d\r\n" % len(body), extra, tail, body))


class Writes:
    """The answers of one loop turn, written together at its end.

    Why: the requests that shared a Redis call are answered in one turn, each after
    ~10 us of Python; written as each is ready, every write to loopback wakes the
    client's thread anew (on a VM an inter-processor interrupt, dear: README "HTTP
    intake: where a request's CPU goes"); written back to back, the first wakes it
    and the others find it awake. One ``call_soon`` a turn, none a request. An answer
    that ends its connection closes it right after its bytes."""

    __slots__ = ("deferrals", "deferred", "pending", "resume", "scheduled", "started",
                 "turn")

    def __init__(self, turn: int = TURN_REQUESTS) -> None:
        self.pending: list[tuple[asyncio.Transport, bytes, bool]] = []
        # Lanes with a (pipelined) request waiting: started once their answers are
        # written, so that a full transport buffer (pause_writing) is known first.
        self.resume: list[FastLane] = []
        self.scheduled = False
        # The turn's budget: requests started since the last flush, at most ``turn``
        # (0: no bound); lanes whose request must wait for a later turn, in order.
        self.turn = turn
        self.started = 0
        self.deferred: list[FastLane] = []
        self.deferrals = 0  # requests put off to a later turn, ever (tests, diagnosis)

    def start(self, loop: asyncio.AbstractEventLoop, lane: FastLane) -> bool:
        """Whether ``lane`` may start a request in this turn; if not, it is started in
        a later one (flush), after the lanes deferred before it."""
        if self.turn and (self.started >= self.turn or self.deferred):
            lane.busy = True  # its bytes wait in its buffer, its idle timer lets it be
            self.deferred.append(lane)
            self.deferrals += 1
            self._schedule(loop)
            return False
        self.started += 1
        self._schedule(loop)
        return True

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self.flush)

    def send(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport,
             data: bytes, close: bool) -> None:
        self.pending.append((transport, data, close))
        self._schedule(loop)

    def flush(self) -> None:
        self.scheduled = False
        self.started = 0
        pending, self.pending = self.pending, []
        resume, self.resume = self.resume, []
        deferred, self.deferred = self.deferred, []
        for t, data, close in pending:
            if t.is_closing():
                continue
            try:
                if data:
                    t.write(data)
            except Exception:  # one connection's failure is not the others' (nor a lost
                t.abort()      # answer taken for sent: the client sees the connection go)
                continue
            if close:
                t.close()
        for lane in resume:
            if not lane.busy and not lane.closing:
                lane._next()
        for lane in deferred:  # this turn's budget, then the next turn's
            lane.busy = False
            lane._next()


class FastLane(asyncio.Protocol):
    """One API connection: intake served here, anything else handed to aiohttp."""

    def __init__(self, server: HttpServer, aiohttp_factory: Callable[[], asyncio.Protocol],
                 lanes: set[FastLane], writes: Writes | None = None) -> None:
        self.server = server
        self.aiohttp_factory = aiohttp_factory
        self.lanes = lanes
        self.writes = writes if writes is not None else Writes()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        # Its loop (asyncio.get_running_loop() is a getpid() system call on 3.11).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.inner: asyncio.Protocol | None = None  # aiohttp's handler once handed off
        # Received, not yet taken by a request: the chunk itself while it is the only
        # one (the usual request: one chunk), a bytearray once chunks must be joined
        # (appending and taking from its front cost no copy of the rest: a body
        # trickled a byte at a time must not cost a copy of the whole per byte).
        self.buf: bytes | bytearray = b""
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0  # a complete request head by then (loop time)
        # The Authorization header this connection last sent that was an admin key's,
        # and the key set it was checked against (HttpServer.keys_generation): the same
        # bytes again need no new hash (nothing secret in comparing them: they are the
        # client's own, as it sent them before on this connection).
        self.admin_auth = b""
        self.admin_gen = -1
        self.busy = False  # a request is being served
        self.closing = False  # close once the request being served is answered
        self.write_paused = False
        self.read_paused = False
        self.body_wait: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        # The request whose head is being parsed (httptools' callbacks fill these).
        self.url = b""
        self.auth = b""
        self.length = 0
        self.ours = True
        self.headers = 0
        self.keep = True
        self.version = b"1.1"

    # asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()
        self.lanes.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lanes.discard(self)
        self.transport = None
        self.parser = None  # type: ignore[assignment]  # (a cycle: it holds self)
        if self.timer is not None:
            self.timer.cancel()
        if self.body_wait is not None and not self.body_wait.done():
            self.body_wait.set_result(None)  # the request sees its body will not come
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
            return
        buf = self.buf
        if not buf:
            self.buf = data
        elif isinstance(buf, bytearray):
            buf += data
        else:
            self.buf = bytearray(buf) + data
        if self.busy:
            wait = self.body_wait
            if wait is not None and len(self.buf) >= self.length and not wait.done():
                wait.set_result(None)
            if (not self.read_paused and self.transport is not None
                    and len(self.buf) > self.server.max_body_bytes + 65536):
                self.read_paused = True
                self.transport.pause_reading()
            return
        self._next()

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        return None  # the transport closes, as aiohttp's handler lets it

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()
        else:
            self.write_paused = True

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()
            return
        self.write_paused = False
        if not self.busy:
            self._next()

    # Timers ----------------------------------------------------------------------------
    def _arm(self) -> None:
        """A complete request head within http.idle_timeout_s, from now (aiohttp's
        keep-alive time-out: from the connection's start or its previous answer). One
        timer a connection, moved on lazily (as aiohttp does): a request costs a
        deadline, not a timer made and cancelled."""
        loop = self.loop
        assert loop is not None
        self.deadline = loop.time() + self.server.idle_timeout_s
        if self.timer is None:
            self.timer = loop.call_at(self.deadline, self._idle)

    def _idle(self) -> None:
        self.timer = None
        if self.busy or self.inner is not None or self.transport is None:
            return  # being served (armed again after its answer), or aiohttp's
        loop = self.loop
        assert loop is not None
        if loop.time() < self.deadline:
            self.timer = loop.call_at(self.deadline, self._idle)
        else:
            self.transport.close()

    # httptools callbacks (the head of the request being looked at) ---------------------
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += 1
        if self.headers > _MAX_HEADERS:
            self.ours = False
        n = name.lower()
        if n == b"authorization":
            if not self.auth:  # the first, as aiohttp's headers.get gives it
                self.auth = value
        elif n == b"content-length":
            self.length = int(value)  # llhttp has checked it is digits, and only one
        elif n in _NOT_OURS:
            self.ours = False

    def on_headers_complete(self) -> None:
        p = self.parser
        self.keep = p.should_keep_alive()
        self.version = p.get_http_version().encode()
        if p.get_method() != b"POST" or self.url != _PATH:
            self.ours = False

    # Requests --------------------------------------------------------------------------
    def _next(self) -> None:
        """Serve the next request in the buffer, if its head is complete."""
        while not self.busy and self.inner is None and not self.write_paused:
            t = self.transport
            if t is None or t.is_closing():
                return
            buf = self.buf
            if self.read_paused and len(buf) <= self.server.max_body_bytes + 65536:
                self.read_paused = False
                t.resume_reading()
            if not buf:
                return
            assert self.loop is not None
            if not self.writes.start(self.loop, self):
                return  # started in a later turn
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                # Not a head we take whole (too long, or lines ended by bare LF):
                # aiohttp's parser answers it as it does today.
                if len(buf) > _MAX_HEAD or b"\n\n" in buf:
                    self._hand_off()
                return
            end += 4
            if end > _MAX_HEAD:
                self._hand_off()
                return
            self.url, self.auth, self.length, self.ours, self.headers = b"", b"", 0, True, 0
            try:
                self.parser.feed_data(buf[:end] if end < len(buf) else buf)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade, ValueError):
                self.ours = False
            if not self.ours or self.length > self.server.max_body_bytes:
                self._hand_off()
                return
            self.busy = True  # the head is whole: the idle timer lets it be
            self._drop(end)
            # Held: the loop keeps only weak references to its tasks.
            assert self.loop is not None
            self.task = self.loop.create_task(
                self._serve(self.keep, self.version))

    def _hand_off(self) -> None:
        """The connection is aiohttp's from here: its handler gets the transport and
        everything from the first byte of the request it is to answer."""
        t = self.transport
        assert t is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.lanes.discard(self)
        inner = self.inner = self.aiohttp_factory()
        if self.read_paused:
            self.read_paused = False
            t.resume_reading()
        buf, self.buf = self.buf, b""
        self.parser = None  # type: ignore[assignment]
        inner.connection_made(t)
        if self.write_paused:
            inner.pause_writing()
        if buf:
            inner.data_received(bytes(buf))

    def _drop(self, n: int) -> None:
        """Take the first ``n`` bytes off the buffer."""
        buf = self.buf
        if n >= len(buf):
            self.buf = b""
        elif isinstance(buf, bytearray):
            del buf[:n]  # CPython moves the start, not the rest
        else:
            self.buf = buf[n:]

    async def _body(self) -> bytes:
        """This request's body: ``self.length`` bytes, within http.body_timeout_s."""
        n = self.length
        if len(self.buf) < n:
            await self._body_wait(n)
        return self._take(n)

    async def _body_wait(self, n: int) -> None:
        """Until ``n`` bytes are in, within http.body_timeout_s."""
        if len(self.buf) < n:
            if self.transport is None:  # gone while its sender was looked up
                raise ConnectionResetError("connection lost before the body")
            assert self.loop is not None
            wait = self.body_wait = self.loop.create_future()
            try:
                async with asyncio.timeout(self.server.body_timeout_s):
                    await wait
            except TimeoutError:
                raise BodyTimeout from None
            finally:
                self.body_wait = None
            if len(self.buf) < n:
                raise ConnectionResetError("connection lost before the body")

    def _take(self, n: int) -> bytes:
        """The body, once it is in (the usual request: with its head, in one chunk)."""
        buf = self.buf
        body = buf if len(buf) == n and isinstance(buf, bytes) else bytes(buf[:n])
        self._drop(n)
        if n and self.parser is not None:
            self.parser.feed_data(body)  # llhttp's state: the message ends with it
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()
        return body

    async def _serve(self, keep: bool, version: bytes) -> None:
        srv = self.server
        started = time.perf_counter()
        answer: Answer | None = None
        taken = False  # the body read (else it is read past after the answer)
        try:
            raw = self.auth
            principal = None
            if not (raw and raw == self.admin_auth and self.admin_gen == srv.keys_generation):
                header = raw.decode("utf-8", "surrogateescape")
                if srv._authorized(header):
                    self.admin_auth, self.admin_gen = raw, srv.keys_generation
                else:
                    principal, answer = await srv.as_account(
                        "POST", INTAKE_ROUTE, header, INTAKE_ROUTE, self.transport)
            if answer is None:
                if srv.draining:
                    answer = DRAINING
                else:
                    n = self.length
                    if len(self.buf) < n:  # (no coroutine a request when it is in)
                        await self._body_wait(n)
                    body = self._take(n)
                    taken = True
                    answer = await srv.intake(body, principal, INTAKE_ROUTE)
        except BodyTimeout:
            keep, taken = False, True
            answer = srv.body_timeout(INTAKE_ROUTE, remote_of(self.transport))
        except ConnectionResetError:
            self.busy = False  # gone before its body: nothing to answer, nothing served
            return
        except Exception as e:
            answer = srv.failure(e, INTAKE_ROUTE)
        srv.count(INTAKE_ROUTE, "POST", answer[0], started, INTAKE_ROUTE, self.transport)
        t = self.transport
        if t is None or t.is_closing():
            self.busy = False
            return
        keep = keep and not self.closing
        assert self.loop is not None
        # Written at the turn's end with the turn's other answers (Writes); the next
        # request on this connection starts in a later turn (a new task), so the
        # answers of a connection still go in order and one at a time.
        self.writes.send(self.loop, t, encode_answer(answer, version, keep), not keep)
        if not keep:
            self.busy = False
            return  # closed once its answer is written (Writes.flush)
        if not taken and self.length:
            # Answered before its body (401/403, draining): read past the body, as
            # aiohttp does after such an answer, before the next request.
            try:
                await self._body()
            except (BodyTimeout, ConnectionResetError):
                self.busy = False
                self.writes.send(self.loop, t, b"", True)  # after its answer
                return
        self.busy = False
        self._arm()
        if self.buf:
            if self.writes.scheduled:  # its answer not written yet: the next after it
                self.writes.resume.append(self)
            else:
                self._next()


class FastLanes:
    """The API listener's protocol factory (inside the connection cap): a fast lane a
    connection while ``http.fast_intake`` is on, aiohttp's handler otherwise."""

    def __init__(self, server: HttpServer, aiohttp_factory: Callable[[], asyncio.Protocol],
                 turn: int = TURN_REQUESTS) -> None:
        self.server = server
        self.aiohttp_factory = aiohttp_factory
        self.lanes: set[FastLane] = set()
        self.writes = Writes(turn)

    def __call__(self) -> asyncio.Protocol:
        if not self.server.fast_intake:
            return self.aiohttp_factory()
        return FastLane(self.server, self.aiohttp_factory, self.lanes, self.writes)

    async def close(self, timeout_s: float) -> None:
        """At stop: idle fast connections closed now, the ones serving a request once
        it is answered (within ``timeout_s``), as aiohttp's shutdown does for its own."""
        for lane in self.lanes:
            lane.closing = True
        self.writes.turn = 0  # every request received is started now, to be answered
        self.writes.flush()  # answers of this turn first: an idle lane may have one due
        for lane in list(self.lanes):
            if not lane.busy and lane.transport is not None:
                lane.transport.close()
        serving = [lane.task for lane in self.lanes if lane.busy and lane.task is not None]
        if serving:
            await asyncio.wait(serving, timeout=timeout_s)
        self.writes.flush()  # their answers, before their connections close
        for lane in list(self.lanes):
            if lane.transport is not None:
                lane.transport.close()
