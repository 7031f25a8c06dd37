"""The webhook sender's HTTP/1.1 client (gatewayd.webhooks.transport) against real
servers on loopback: keep-alive reuse, the ways an answer ends (Content-Length, chunked,
the connection's close, a body past the cap), servers that close idle connections or a
reused one under a request, a server that stalls (the sender's timeout, retried), TLS
with a private CA, the target check at connect time, and Kannel GETs."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httptools
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp.abc import AbstractResolver, ResolveResult

from gatewayd.config import Config
from gatewayd.ops import metrics
from gatewayd.store.connection import connect
from gatewayd.store.keys import Keys
from gatewayd.webhooks import body as bodies
from gatewayd.webhooks import transport
from gatewayd.webhooks.sender import EndpointSender, Entry, Item, Outcome
from gatewayd.webhooks.subscriptions import Endpoint
from gatewayd.webhooks.targets import GuardedResolver, PrivateTarget

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# What the server does with a request: bytes to answer, "close" (drop the connection
# unanswered), "stall" (never answer), or "answer-then-close" (OK, then close at once).
Action = bytes | str


class Request(msgspec.Struct):
    conn: int  # the connection's number, in the order they were made
    nth: int  # the request's number on its connection
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class Server:
    """A loopback HTTP/1.1 server; ``decide(request, n)`` says what to do with the n-th
    request (0-based), by default answer OK. Counts connections and records requests."""

    def __init__(self, decide: Callable[[Request, int], Action] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.decide = decide or (lambda _r, _n: OK)
        self.tls = tls
        self.connections = 0
        self.conns: list[_ServerConn] = []
        self.requests: list[Request] = []
        self.closed = 0  # connections closed (either side)
        self.changed = asyncio.Event()  # set at every request and close
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _ServerConn(self), "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for c in self.conns:
                if c.transport is not None:
                    c.transport.abort()
            await self._server.wait_closed()

    async def until(self, ok: Callable[[], bool]) -> None:
        while not ok():
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"


class _ServerConn(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.number = server.connections
        server.connections += 1
        server.conns.append(self)
        self.headers: dict[str, str] = {}
        self.body = b""
        self.served = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.closed += 1
        self.server.changed.set()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.target = url.decode()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        s = self.server
        self.served += 1
        req = Request(self.number, self.served - 1, self.parser.get_method().decode(), self.target,
                      self.headers, self.body)
        self.headers, self.body = {}, b""
        s.requests.append(req)
        s.changed.set()
        assert self.transport is not None
        action = s.decide(req, len(s.requests) - 1)
        if action == "close":
            self.transport.close()
        elif action == "answer-then-close":
            self.transport.write(OK)
            self.transport.close()
        elif isinstance(action, bytes):
            self.transport.write(action)


class Fixed(AbstractResolver):
    """Every name resolves to ``address`` (as a name server would answer it)."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.address = address

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": self.address, "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


def request(url: str, body: bytes = b"{}") -> bytes:
    head = (f"POST {transport.target_of(url)} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def pool(server: Server, size: int = 4, **kw: Any) -> transport.Pool:
    url = kw.pop("url", server.url())
    client = transport.Client(size=size, resolver=kw.pop(
        "resolver", GuardedResolver(allow_private=True)), **kw)
    return client.pool(transport.Origin(url))


async def test_keep_alive_reuses_connections_up_to_the_pool_size() -> None:
    server = Server()
    await server.start()
    try:
        p = pool(server, size=4)
        for _ in range(20):
            assert await p.request(request(server.url())) == 200
        assert server.connections == 1 and p.connections_made == 1
        # 4 at once: 4 connections, kept and reused by the next 4 at once.
        for _ in range(3):
            assert await asyncio.gather(
                *(p.request(request(server.url())) for _ in range(4))) == [200] * 4
        assert server.connections == 4 and len(p.idle) == 4
        # 6 at once with 4 kept: 2 more connections, closed after (only 4 stay).
        assert await asyncio.gather(
            *(p.request(request(server.url())) for _ in range(6))) == [200] * 6
        assert server.connections == 6 and len(p.idle) == 4
        await server.until(lambda: server.closed == 2)
        assert len(server.requests) == 20 + 12 + 6
        p.close()
    finally:
        await server.stop()


@pytest.mark.parametrize("answer, status, reused", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 200, True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204, True),
    (b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
     201, False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, False),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\nno",
     503, True),
    (b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
     302, True),  # redirects are not followed
])
async def test_answers_end_by_length_chunks_or_close(answer: bytes, status: int,
                                                     reused: bool) -> None:
    server = Server(lambda _r, _n: answer)
    await server.start()
    try:
        p = pool(server)
        statuses = [await p.request(request(server.url())) for _ in range(3)]
        assert statuses == [status] * 3
        assert len(server.requests) == 3
        assert server.connections == (1 if reused else 3)
        p.close()
    finally:
        await server.stop()


async def test_a_body_delimited_by_the_close_is_read_to_its_end() -> None:
    server = Server(lambda _r, _n: b"")  # answered by hand below
    await server.start()
    try:
        p = pool(server)
        task = asyncio.get_running_loop().create_task(p.request(request(server.url())))
        await server.until(lambda: len(server.requests) == 1)
        (conn,) = server.conns
        assert conn.transport is not None
        conn.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the")
        await asyncio.sleep(0.05)
        assert not task.done()  # no length: the body may go on
        conn.transport.write(b" end")
        conn.transport.close()
        assert await task == 200
        assert not p.idle
        p.close()
    finally:
        await server.stop()


async def test_a_huge_body_is_not_read_past_the_cap() -> None:
    chunk = b"x" * 65536
    big = transport.BODY_CAP * 50

    def decide(_r: Request, _n: int) -> Action:
        return (f"HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n".encode()
                + chunk * (2 * transport.BODY_CAP // len(chunk)))

    server = Server(decide)
    await server.start()
    try:
        p = pool(server)
        # 2 MiB of a 50 MiB body sent and then nothing: the status stands at the cap.
        assert await asyncio.wait_for(p.request(request(server.url())), 10) == 200
        assert not p.idle  # not reusable: the rest of the body was not read
        await server.until(lambda: server.closed == 1)
        p.close()
    finally:
        await server.stop()


async def test_idle_connections_closed_by_the_server_are_dropped() -> None:
    server = Server(lambda _r, _n: "answer-then-close")
    await server.start()
    try:
        p = pool(server)
        for _ in range(3):
            assert await p.request(request(server.url())) == 200
            for _ in range(1000):  # the client's side of the close, a few turns later
                if not p.idle:
                    break
                await asyncio.sleep(0.01)
            assert not p.idle
        assert server.connections == 3 and len(server.requests) == 3
        p.close()
    finally:
        await server.stop()


async def test_a_reused_connection_dropped_under_a_request_is_retried_once() -> None:
    """The server takes a request on a kept connection and closes it unanswered (its idle
    timeout racing the request): sent once more on a new connection, answered there. A
    new connection that does the same is an error, not retried again."""
    server = Server(lambda r, _n: "close" if r.conn == 0 and r.body == b"2" else OK)
    await server.start()
    try:
        p = pool(server)
        assert await p.request(request(server.url(), b"1")) == 200
        assert await p.request(request(server.url(), b"2")) == 200
        assert [(r.conn, r.body) for r in server.requests] == [(0, b"1"), (0, b"2"),
                                                               (1, b"2")]
        server.decide = lambda _r, _n: "close"
        p.close()
        with pytest.raises(transport.ServerDisconnectedError, match="Server disconnected"):
            await p.request(request(server.url(), b"3"))
        assert [r.body for r in server.requests].count(b"3") == 1
    finally:
        await server.stop()


async def test_tls_needs_the_ca_and_checks_the_name(tmp_path: Path) -> None:
    from tests.security_helpers import make_pki

    pki = make_pki(tmp_path / "pki")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    names: list[str] = []
    ctx.sni_callback = lambda _s, name, _c: names.append(name or "") or None
    server = Server(tls=ctx)
    await server.start()
    try:
        url = server.url(host="localhost")
        fixed = GuardedResolver(Fixed(), allow_private=True)
        with pytest.raises(transport.ClientConnectorCertificateError,
                           match="CERTIFICATE_VERIFY_FAILED"):
            await pool(server, url=url, resolver=fixed).request(request(url))
        trusted = pool(server, url=url, resolver=fixed, ca_file=str(pki.ca))
        assert await trusted.request(request(url)) == 200
        assert await trusted.request(request(url)) == 200
        assert server.connections == 2  # the refused handshake, then one kept
        # The same address under a name the certificate does not carry: refused.
        other = server.url(host="hooks.example.test")
        with pytest.raises(transport.ClientConnectorCertificateError):
            await pool(server, url=other, resolver=fixed,
                       ca_file=str(pki.ca)).request(request(other))
        assert "localhost" in names and "hooks.example.test" in names
        trusted.close()
    finally:
        await server.stop()


async def test_private_addresses_are_refused_at_connect_time() -> None:
    server = Server()
    await server.start()
    try:
        p = pool(server, resolver=GuardedResolver(Fixed(), allow_private=False))
        with pytest.raises(PrivateTarget, match=r"resolves to 127\.0\.0\.1"):
            await p.request(request(server.url()))
        assert server.connections == 0
    finally:
        await server.stop()


async def test_a_refused_connection_reads_as_aiohttp_said_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    client = transport.Client(size=1, resolver=GuardedResolver(allow_private=True))
    p = client.pool(transport.Origin(f"http://127.0.0.1:{port}/x"))
    with pytest.raises(transport.ClientConnectorError,
                       match=rf"^Cannot connect to host 127\.0\.0\.1:{port} ssl:default \["):
        await p.request(request("http://x/x"))


# The sender over it ------------------------------------------------------------------

class _Host:
    """What an EndpointSender needs of its runner, with a real Redis."""

    def __init__(self, redis_url: str, keys: Keys) -> None:
        self.redis = connect(redis_url)
        self.keys = keys
        self.cfg = msgspec.structs.replace(Config(), webhooks=msgspec.structs.replace(
            Config().webhooks, allow_private=True, backoff_min_s=0.05, backoff_max_s=0.1))
        self.resolver: AbstractResolver | None = None
        self.guard: AbstractResolver = GuardedResolver(allow_private=True)
        self.backlog_reading = False


def _items(n: int, start: int = 0) -> list[Item]:
    out = []
    for i in range(start, start + n):
        sid = f"{1700000000000 + i}-0"
        event = {"event_id": f"e{sid}", "kind": "submitted", "message_id": f"m{i}"}
        out.append(Item(Entry(sid.encode(), 1), bodies.encode(event), f"m{i}".encode(),
                        sid.encode(), event))
    return out


def _ids(server: Server) -> list[str]:
    return [e["event_id"] for r in server.requests if r.method == "POST"
            for e in json.loads(r.body)["events"]]


async def test_the_sender_loses_nothing_to_a_server_closing_kept_connections(
        redis_url: str, redis: aioredis.Redis, keys: Keys) -> None:
    """Every third request, when it is not a connection's first, is dropped unanswered
    (a kept connection closing under it): each is sent again on a new connection,
    nothing goes to the retry queue, every event arrives."""
    server = Server(lambda r, n: "close" if r.nth > 0 and n % 3 == 1 else OK)
    await server.start()
    host = _Host(redis_url, keys)
    sender = EndpointSender(Endpoint("idle", server.url(), batch=10, concurrency=2,
                                     secret=b"s"), host)
    try:
        items = _items(200)
        for chunk in range(0, 200, 20):
            for i in items[chunk:chunk + 20]:
                sender.offer(i)
            await server.until(lambda c=chunk: len(set(_ids(server))) >= c + 20)  # type: ignore[misc]
        assert set(_ids(server)) == {f"e{i.sid.decode()}" for i in items}
        assert not sender.failing and await redis.zcard(keys.webhook_queue("idle")) == 0
        assert all(r.headers["x-gatewayd-signature"].startswith("t=")
                   for r in server.requests)
        assert server.connections > 2  # connections were dropped and made again
    finally:
        await sender.close()
        await host.redis.aclose()
        await server.stop()


async def test_a_stalled_server_times_out_and_the_request_is_retried(
        redis_url: str, redis: aioredis.Redis, keys: Keys) -> None:
    stall = asyncio.Event()
    stall.set()
    server = Server(lambda _r, _n: "stall" if stall.is_set() else OK)
    await server.start()
    host = _Host(redis_url, keys)
    sender = EndpointSender(Endpoint("stall", server.url(), batch=10, concurrency=1,
                                     timeout_s=0.3), host)
    timeouts = metrics.WEBHOOK_FAILED.labels("stall", "timeout")
    before = timeouts._value.get()
    try:
        batch = _items(3)
        assert await sender._post(batch) == (Outcome.RETRY, "timeout after 0.3 s")
        assert timeouts._value.get() == before + 1
        # Through the sender: the failed request's events wait in the retry queue and
        # go out from there once the server answers again.
        for i in batch:
            sender.offer(i)
        await server.until(lambda: len(server.requests) >= 2)
        for _ in range(1000):  # its timeout: the events go to the retry queue
            if sender.failing:
                break
            await asyncio.sleep(0.01)
        assert sender.failing and sender.last_error == "timeout after 0.3 s"
        stall.clear()
        for _ in range(200):  # the retry queue drains once an answer comes
            if not sender.failing and not await redis.zcard(keys.webhook_queue("stall")):
                break
            await asyncio.sleep(0.05)
        assert not sender.failing and sender.attempts == 0
        assert sender.last_error == "timeout after 0.3 s"
        assert set(_ids(server)[-3:]) == {f"e{i.sid.decode()}" for i in batch}
    finally:
        await sender.close()
        await host.redis.aclose()
        await server.stop()


async def test_kannel_requests_are_gets_of_the_template(
        redis_url: str, keys: Keys) -> None:
    server = Server()
    await server.start()
    host = _Host(redis_url, keys)
    url = server.url("/dlr?id=%I&d=%d", host="localhost")
    sender = EndpointSender(Endpoint("kannel", url, format="kannel", batch=1,
                                     secret=b"k"), host)
    try:
        event = {"event_id": "e1-0", "kind": "delivered", "message_id": "ab c",
                 "state": "delivered"}
        item = Item(None, bodies.encode(event), b"ab c", b"1-0", event)
        assert await sender._post([item]) == (Outcome.OK, "")
        (r,) = server.requests
        assert (r.method, r.target, r.body) == ("GET", "/dlr?id=ab%20c&d=1", b"")
        assert r.headers["host"] == f"localhost:{server.port}"
        assert r.headers["x-gatewayd-event-id"] == "e1-0"
        assert "content-length" not in r.headers
    finally:
        await sender.close()
        await host.redis.aclose()
        await server.stop()


def _of(pairs: list[tuple[str, str]]) -> list[Item]:
    """Items of (message id, state), in stream order."""
    out = []
    for n, (msg, state) in enumerate(pairs):
        sid = f"{1700000000000 + n}-0"
        event = {"event_id": f"e{sid}", "kind": state, "message_id": msg}
        out.append(Item(Entry(sid.encode(), 1), bodies.encode(event), msg.encode(),
                        sid.encode(), event))
    return out


async def _until(ok: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not ok():
            await asyncio.sleep(0.005)


async def test_a_batch_leaves_out_the_events_of_a_message_in_flight(
        redis_url: str, keys: Keys) -> None:
    """How a request's batch is taken: the next ``batch`` events when none of their
    messages is in flight (one request, in stream order); else an event of a message in
    flight is held, with every later one of that message, in order, the batch filled
    from further on, and the held ones go once that message has landed."""
    server = Server()
    await server.start()
    host = _Host(redis_url, keys)
    sender = EndpointSender(Endpoint("pick", server.url(), batch=4, concurrency=4), host)
    sender.task.cancel()  # its loop not running: the test takes each batch itself
    try:
        items = _of([("a", "queued"), ("b", "queued"), ("c", "queued"), ("d", "queued"),
                     ("e", "queued")])
        sender.live.extend(items)
        await sender._send_live()
        await server.until(lambda: len(server.requests) == 1)
        assert _ids(server) == [f"e{i.sid.decode()}" for i in items[:4]]
        await _until(lambda: not sender.busy)  # it landed
        assert [i.msg for i in sender.live] == [b"e"]
        sender.live.clear()

        # "m" in flight (as if its submitted were in a request not yet answered).
        sender.busy.add(b"m")
        later = _of([("m", "delivered"), ("x", "queued"), ("m", "expired"), ("y", "queued"),
                     ("z", "queued"), ("w", "queued"), ("v", "queued")])
        sender.live.extend(later)
        await sender._send_live()
        await server.until(lambda: len(server.requests) == 2)
        second = json.loads(server.requests[1].body)["events"]
        assert [e["message_id"] for e in second] == ["x", "y", "z", "w"]
        assert [(i.msg, i.event and i.event["kind"]) for i in sender.live] == [
            (b"m", "delivered"), (b"m", "expired"), (b"v", "queued")]
        await _until(lambda: sender.busy == {b"m"})  # the second request landed
        sender.busy.discard(b"m")  # the first request of "m" landed
        await sender._send_live()
        await server.until(lambda: len(server.requests) == 3)
        third = json.loads(server.requests[2].body)["events"]
        assert [(e["message_id"], e["kind"]) for e in third] == [
            ("m", "delivered"), ("m", "expired"), ("v", "queued")]
    finally:
        await sender.close()
        await host.redis.aclose()
        await server.stop()
