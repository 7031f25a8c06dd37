"""The fast lane (gatewayd.http.fastlane) over real sockets: ``POST /v1/messages`` answered
exactly as aiohttp answers it (the same requests to a server with ``fast_intake`` on and
one with it off), other routes handed to aiohttp on the same keep-alive connection,
pipelined requests answered in order, and every limit (head and idle time-outs, body
time-out, body cap, connection cap, malformed requests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from gatewayd.http.backend import Backend, EnqueueResult
from gatewayd.http.server import HttpServer, hash_key
from gatewayd.store.keys import Keys
from tests.test_ops_http import RedisBackend

KEY = "fast-key"
AUTH = f"Authorization: Bearer {KEY}\r\n".encode()
MSG = {"to": "+8613800138000", "text": "验证码 123456", "category": "otp"}


class Unavailable(Exception):
    """Stands for the store's "cannot answer now" exceptions (503 + Retry-After)."""


class Flaky(RedisBackend):
    """The test backend, but a message whose text says so makes enqueue raise."""

    async def enqueue(self, items: list[Any], *, source: str) -> list[EnqueueResult]:
        first = items[0] if items and isinstance(items[0], dict) else {}
        if first.get("text") == "unavailable":
            raise Unavailable("redis away")
        if first.get("text") == "crash":
            raise RuntimeError("a bug")
        return await super().enqueue(items, source=source)


Start = Callable[..., Awaitable[HttpServer]]


@pytest.fixture
async def start(redis: aioredis.Redis, keys: Keys) -> AsyncIterator[Start]:
    servers: list[HttpServer] = []

    async def _start(**kw: Any) -> HttpServer:
        be: Backend = Flaky(redis, keys)
        kw.setdefault("api_key_hashes", [hash_key(KEY)])
        kw.setdefault("max_body_bytes", 8192)
        kw.setdefault("unavailable", (Unavailable,))
        server = HttpServer("127.0.0.1:0", be, **kw)
        await server.start()
        servers.append(server)
        return server

    yield _start
    for s in servers:
        await s.stop()


def post(body: bytes, *, auth: bytes = AUTH, extra: bytes = b"", version: bytes = b"1.1",
         path: bytes = b"/v1/messages") -> bytes:
    return (b"POST " + path + b" HTTP/" + version + b"\r\nHost: x\r\n" + auth + extra
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body)


def js(doc: Any) -> bytes:
    return msgspec.json.encode(doc)


class Answer(msgspec.Struct):
    status: int
    line: str
    headers: dict[str, str]
    body: bytes

    def doc(self) -> Any:
        return msgspec.json.decode(self.body)


async def read_answer(reader: asyncio.StreamReader) -> Answer | None:
    """One HTTP answer (Content-Length framed), or None if the server closed first."""
    try:
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for ln in lines[1:]:
        if ln:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    body = await reader.readexactly(n) if n else b""
    return Answer(int(lines[0].split()[1]), lines[0], headers, body)


async def closed(reader: asyncio.StreamReader, within_s: float = 5.0) -> bool:
    try:
        async with asyncio.timeout(within_s):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def exchange(server: HttpServer, raw: bytes) -> tuple[Answer | None, bool]:
    """``raw`` on a new connection: the first answer, and whether the server then
    closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(raw)
        answer = await read_answer(reader)
        return answer, await closed(reader, 0.3)
    finally:
        writer.close()


def normal(a: Answer | None) -> Any:
    """What must be equal between the two stacks: all but the date and generated ids."""
    if a is None:
        return None
    headers = {k: v for k, v in a.headers.items() if k != "date"}
    doc: Any = a.body
    if a.headers.get("content-type", "").startswith("application/json"):
        doc = a.doc()
        for r in doc.get("results", ()) if isinstance(doc, dict) else ():
            if "id" in r:
                r["id"] = "<id>"
    return a.line, headers, doc


CHUNKED = (b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n" + AUTH
           + b"Transfer-Encoding: chunked\r\n\r\n"
           + b"%x\r\n" % len(js(MSG)) + js(MSG) + b"\r\n0\r\n\r\n")
CASES: dict[str, bytes] = {
    "one": post(js(MSG)),
    "batch": post(js([MSG, dict(MSG, to="+8613900139000")])),
    "idempotent": post(js(dict(MSG, idempotency_key="k-1"))),
    "invalid items": post(js([MSG, {"to": "x"}, {"text": "no to"}])),
    "bad json": post(b"{nope"),
    "empty body": post(b""),
    "not an object": post(b"42"),
    "empty array": post(b"[]"),
    "too many items": post(js([{}] * 1001)),
    "no key": post(js(MSG), auth=b""),
    "wrong key": post(js(MSG), auth=b"Authorization: Bearer nope\r\n"),
    "basic scheme": post(js(MSG), auth=f"Authorization: Basic {KEY}\r\n".encode()),
    "lower-case scheme": post(js(MSG), auth=f"Authorization: bearer {KEY}\r\n".encode()),
    "over the body cap": post(js([dict(MSG, ref=f"r{i}") for i in range(100)])),
    "chunked": CHUNKED,
    "http/1.0": post(js(MSG), version=b"1.0"),
    "http/1.0 keep-alive": post(js(MSG), version=b"1.0", extra=b"Connection: keep-alive\r\n"),
    "connection close": post(js(MSG), extra=b"Connection: close\r\n"),
    "store unavailable": post(js(dict(MSG, text="unavailable"))),
    "backend crash": post(js(dict(MSG, text="crash"))),
    "query string": post(js(MSG), path=b"/v1/messages?x=1"),
    "trailing slash": post(js(MSG), path=b"/v1/messages/"),
    "wrong method": b"PUT /v1/messages HTTP/1.1\r\nHost: x\r\n" + AUTH
                    + b"Content-Length: 0\r\n\r\n",
    "get": b"GET /v1/messages HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n",
    "expect 100-continue": post(js(MSG), extra=b"Expect: 100-continue\r\n"),
    "malformed head": b"POST /v1/messages HTTP/1.1\r\nHost x\r\n\r\n",
    "not http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "two content-lengths": post(js(MSG), extra=b"Content-Length: 3\r\n"),
}


async def test_answers_equal_aiohttps(start: Start, redis: aioredis.Redis) -> None:
    """Each request, to a fast-lane server and to an aiohttp-only one: the same status
    line, headers (but Date), JSON body (but generated ids), and close or keep-alive."""
    fast = await start(fast_intake=True)
    slow = await start(fast_intake=False)
    # The cases at once on each server in turn (each waits to see whether its
    # connection closes); the store emptied between, so the idempotency key answers alike.
    await redis.flushdb()
    fast_got = await asyncio.gather(*(exchange(fast, raw) for raw in CASES.values()))
    await redis.flushdb()
    slow_got = await asyncio.gather(*(exchange(slow, raw) for raw in CASES.values()))
    for name, a, b in zip(CASES, fast_got, slow_got, strict=True):
        assert (normal(a[0]), a[1]) == (normal(b[0]), b[1]), name
        assert a[0] is None or a[0].status != 500 or name == "backend crash", name
    for server in (fast, slow):
        server.drain()
    a, b = await exchange(fast, post(js(MSG))), await exchange(slow, post(js(MSG)))
    assert (normal(a[0]), a[1]) == (normal(b[0]), b[1])
    assert a[0] is not None and a[0].status == 503


async def test_answers_carry_what_aiohttp_writes(start: Start) -> None:
    fast = await start()
    a, shut = await exchange(fast, post(js(MSG), auth=b""))
    assert a is not None and a.status == 401 and not shut
    assert a.headers["www-authenticate"] == 'Bearer realm="gatewayd"'
    assert a.headers["content-type"] == "application/json"
    assert a.headers["server"].startswith("Python/") and "date" in a.headers
    a, shut = await exchange(fast, post(js(dict(MSG, text="unavailable"))))
    assert a is not None and a.status == 503 and a.headers["retry-after"] == "1"
    a, shut = await exchange(fast, post(js(MSG), version=b"1.0"))
    assert a is not None and a.line.startswith("HTTP/1.0 202") and shut


async def test_mixed_routes_on_one_keepalive_connection(start: Start,
                                                        redis: aioredis.Redis,
                                                        keys: Keys) -> None:
    server = await start()
    lanes = server._lanes.lanes
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(post(js(MSG)))
        first = await read_answer(reader)
        assert first is not None and first.status == 202
        assert len(lanes) == 1  # served by the fast lane
        msg_id = first.doc()["results"][0]["id"]
        writer.write(f"GET /v1/messages/{msg_id} HTTP/1.1\r\nHost: x\r\n".encode()
                     + AUTH + b"\r\n")
        status = await read_answer(reader)
        assert status is not None and status.status == 200
        assert status.doc()["state"] == "queued"
        assert not lanes  # the connection is aiohttp's now
        writer.write(post(js(dict(MSG, to="+8613900139000"))))
        third = await read_answer(reader)
        assert third is not None and third.status == 202
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        health = await read_answer(reader)
        assert health is not None and health.doc()["status"] == "ok"
    finally:
        writer.close()
    assert await redis.xlen(keys.queue("otp")) == 2


async def test_pipelined_requests_answered_in_order(start: Start, redis: aioredis.Redis,
                                                    keys: Keys) -> None:
    server = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        burst = b"".join(post(js(dict(MSG, ref=f"p{i}", idempotency_key=f"p{i}")))
                         for i in range(20))
        burst += post(b"{nope")  # an error in the middle
        burst += post(js(dict(MSG, ref="p0", idempotency_key="p0")))  # a duplicate
        burst += b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # aiohttp's, after them
        burst += post(js(dict(MSG, ref="last")))  # aiohttp's too: the connection is
        # Split mid-request, so heads and bodies arrive in pieces.
        for i in range(0, len(burst), 997):
            writer.write(burst[i:i + 997])
            await writer.drain()
        answers = [await read_answer(reader) for _ in range(24)]
    finally:
        writer.close()
    assert all(a is not None for a in answers)
    got = [a.status for a in answers if a is not None]
    assert got == [202] * 20 + [400, 202, 200, 202]
    ids = [a.doc()["results"][0]["id"] for a in answers[:20] if a is not None]
    assert answers[21] is not None and answers[21].doc()["results"][0] == {
        "index": 0, "id": ids[0], "duplicate": True}
    assert await redis.xlen(keys.queue("otp")) == 21


async def test_slow_head_cut_off_and_idle_closed(start: Start) -> None:
    server = await start(idle_timeout_s=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /v1/messages HTTP/1.1\r\n")
    t0 = asyncio.get_running_loop().time()
    for _ in range(3):  # a header line now and then never completes the head
        await asyncio.sleep(0.2)
        if writer.is_closing():
            break
        writer.write(b"X-Slow: 1\r\n")
    assert await closed(reader, 3.0)
    assert asyncio.get_running_loop().time() - t0 < 2.0
    writer.close()
    # After an answer: idle keep-alive closed after the time-out.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(post(js(MSG)))
    a = await read_answer(reader)
    assert a is not None and a.status == 202
    assert await closed(reader, 3.0)
    writer.close()


async def test_slow_body_gets_408_and_close(start: Start, redis: aioredis.Redis,
                                            keys: Keys) -> None:
    server = await start(body_timeout_s=0.5)
    body = js(MSG)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(post(body)[:-5])  # all but the body's last bytes
    a = await read_answer(reader)
    assert a is not None and a.status == 408
    assert a.doc()["error"]["code"] == "timeout" and a.headers["connection"] == "close"
    assert await closed(reader)
    writer.close()
    assert await redis.exists(keys.queue("otp")) == 0


async def test_refused_before_a_body_that_never_comes(start: Start) -> None:
    """401 answers at once (before the body); the lane then reads past the body, which
    never comes: the connection closes after its answer, which is not lost (answers
    are written at the turn's end, a close after them)."""
    server = await start(body_timeout_s=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(post(js(MSG), auth=b"Authorization: Bearer nope\r\n")[:-5])
    a = await read_answer(reader)
    assert a is not None and a.status == 401 and "connection" not in a.headers
    assert await closed(reader)
    writer.close()


async def test_malformed_and_cap(start: Start) -> None:
    server = await start(max_connections=3)
    a, shut = await exchange(server, b"POST /v1/messages HTTP/1.1\r\nHost x\r\n\r\n")
    # aiohttp's parser answers it (handed off), as without the fast lane: its own
    # plain-text 400 (not JSON: no handler of ours runs), and the connection closed.
    assert a is not None and a.status == 400 and shut
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    refused = await read_answer(reader)
    assert refused is not None and refused.status == 503
    writer.close()
    # The held ones are still served.
    r0, w0 = held[0]
    w0.write(post(js(MSG)))
    ok = await read_answer(r0)
    assert ok is not None and ok.status == 202
    for _r, w in held:
        w.close()


async def test_fast_intake_off_serves_by_aiohttp(start: Start) -> None:
    server = await start(fast_intake=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(post(js(MSG)))
    a = await read_answer(reader)
    assert a is not None and a.status == 202 and not server._lanes.lanes
    writer.close()


async def test_stop_answers_a_request_in_hand(start: Start) -> None:
    server = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(post(js(MSG))[:-3])  # its body not yet whole
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.1)
    writer.write(post(js(MSG))[-3:])
    a = await read_answer(reader)
    await stopping
    assert a is not None and a.status == 202 and a.headers["connection"] == "close"
    assert await closed(idle_r, 1.0)
    writer.close()
    idle_w.close()


def test_config_key_and_its_reload(tmp_path: Path) -> None:
    """``http.fast_intake``: true by default, false accepted by check-config's loader,
    and a reload that changes it says it needs a restart (the listener keeps its lane)."""
    from gatewayd.config import load_config
    from gatewayd.control.reload import diff

    def config(extra: str) -> Any:
        p = tmp_path / "gw.toml"
        p.write_text(f'[http]\n{extra}\n\n[[carrier]]\nname = "a"\nhost = "127.0.0.1"\n'
                     'system_id = "acme"\npassword = "secret"\nmo_country_code = "86"\n',
                     encoding="utf-8")
        p.chmod(0o600)
        return load_config(p)

    on, off = config(""), config("fast_intake = false")
    assert on.http.fast_intake is True and off.http.fast_intake is False
    plan = diff(on, off)
    assert "http.fast_intake" in plan.restart and "fast_intake" not in plan.http
    # http.turn_requests: 32 by default, 0 (no bound) accepted, a negative refused; a
    # reload that changes it needs a restart too.
    from gatewayd.errors import ConfigError
    assert on.http.turn_requests == 32
    unbounded = config("turn_requests = 0")
    assert unbounded.http.turn_requests == 0
    assert "http.turn_requests" in diff(on, unbounded).restart
    with pytest.raises(ConfigError, match="turn_requests"):
        config("turn_requests = -1")


async def test_trickled_request_is_served(start: Start, redis: aioredis.Redis,
                                          keys: Keys) -> None:
    """A head and a body arriving in small pieces: one request, served whole."""
    server = await start(body_timeout_s=10.0, idle_timeout_s=10.0)
    raw = post(js([dict(MSG, ref=f"t{i}") for i in range(40)]))
    assert 3000 < len(raw) < 8192
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for i in range(0, len(raw), 61):
            writer.write(raw[i:i + 61])
            await writer.drain()
            await asyncio.sleep(0)
        a = await read_answer(reader)
    finally:
        writer.close()
    assert a is not None and a.status == 202 and len(a.doc()["results"]) == 40
    assert await redis.xlen(keys.queue("otp")) == 40


async def test_revoked_key_refused_on_an_open_connection(start: Start) -> None:
    """A reload that drops a key: the next request on a keep-alive connection that was
    let in with it is refused (the lane's cache of the checked header is dropped)."""
    server = await start(max_body_bytes=8192)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(post(js(MSG)))
        ok = await read_answer(reader)
        assert ok is not None and ok.status == 202
        writer.write(post(js(MSG)))
        again = await read_answer(reader)
        assert again is not None and again.status == 202
        server.configure(api_key_hashes=[hash_key("another-key")], max_body_bytes=8192,
                         max_connections=1024, idle_timeout_s=15.0, body_timeout_s=30.0)
        writer.write(post(js(MSG)))
        refused = await read_answer(reader)
        assert refused is not None and refused.status == 401
    finally:
        writer.close()


async def test_a_flood_starts_a_bounded_number_a_turn_and_answers_all_in_order(
    start: Start, redis: aioredis.Redis, keys: Keys
) -> None:
    from gatewayd.http.fastlane import TURN_REQUESTS

    server = await start()
    lanes = server._lanes
    assert lanes is not None
    conns = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(100)]
    # How many requests each turn starts, seen by a callback that runs once a turn.
    loop = asyncio.get_running_loop()
    most = 0
    done = False

    def probe() -> None:
        nonlocal most
        most = max(most, lanes.writes.started)
        if not done:
            loop.call_soon(probe)

    probe()
    try:
        for i, (_, w) in enumerate(conns):  # two pipelined requests on each, at once
            w.write(post(js(dict(MSG, ref=f"c{i}-0"))) + post(js(dict(MSG, ref=f"c{i}-1"))))
        answers = [[await read_answer(r) for _ in range(2)] for r, _ in conns]
    finally:
        done = True
        for _, w in conns:
            w.close()
    assert all(a is not None and a.status == 202 for pair in answers for a in pair)
    assert lanes.writes.deferrals > 0  # the flood did not all start in one turn
    assert 0 < most <= TURN_REQUESTS
    # Every request accepted once: none lost or doubled by being put off.
    entries = await redis.xrange(keys.queue("otp"))
    assert len(entries) == 200
    ids = {f"c{i}-{k}": answers[i][k].doc()["results"][0]["id"]  # type: ignore[union-attr]
           for i in range(100) for k in range(2)}
    assert len(set(ids.values())) == 200
