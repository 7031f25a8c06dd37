"""The HTTP API over real TCP, with a small Backend of its own on the real Redis fixture."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import aiohttp
import msgspec
import pytest
import redis.asyncio as aioredis

from gatewayd.consent import records
from gatewayd.errors import MessageError
from gatewayd.http.backend import Backend, EnqueueResult, FieldError
from gatewayd.http.server import MAX_ITEMS, HttpServer, hash_key, is_loopback, parse_listen
from gatewayd.pipeline.intake import parse_message, to_fields
from gatewayd.pipeline.status import read_status
from gatewayd.store.keys import Keys

KEY = "s3cret-key"
CLASSES = ["otp", "transactional", "marketing"]


class RedisBackend:
    """What the daemon does, in miniature: validate like the stream path, XADD, status."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, max_segments: int = 10) -> None:
        self.redis = redis
        self.max_segments = max_segments
        self.keys = keys
        self.reload_ok = True
        self.carriers: dict[str, str] = {"cmcc": "bound"}
        self.sources: list[str] = []

    async def enqueue(self, items: list[Any], *, source: str) -> list[EnqueueResult]:
        self.sources.append(source)
        out: list[EnqueueResult] = []
        for i, item in enumerate(items):
            try:
                msg = parse_message(item, classes=CLASSES, max_segments=self.max_segments)
            except MessageError as e:
                out.append(EnqueueResult(index=i, errors=[FieldError(e.field, e.reason)]))
                continue
            if msg.idempotency_key:
                key = self.keys.idempotency(msg.category, msg.idempotency_key)
                if not await self.redis.set(key, msg.id, nx=True, ex=86400):
                    out.append(EnqueueResult(index=i, id=await self.redis.get(key),
                                             duplicate=True))
                    continue
            await self.redis.xadd(self.keys.queue(msg.category), to_fields(msg))
            await self.redis.hset(self.keys.status(msg.id), mapping={
                "state": "queued", "category": msg.category, "enqueued_at": msg.enqueued_at})
            out.append(EnqueueResult(index=i, id=msg.id))
        return out

    async def status(self, msg_id: str) -> dict[str, Any] | None:
        return await read_status(self.redis, self.keys, msg_id)

    async def optout(
        self, action: Literal["add", "remove", "check"], number: str, scope: str,
        category: str = "",
    ) -> dict[str, Any]:
        key = self.keys.optout(number)
        name = f"{scope}|{category}" if category else scope
        if action == "add":
            await self.redis.hset(key, name, time.time())
        elif action == "remove":
            await self.redis.hdel(key, name)
        scopes = await self.redis.hgetall(key)
        return {"number": number, "opted_out": {k: float(v) for k, v in scopes.items()}}

    def consent(self, number: str, since: float, until: float) -> AsyncIterator[dict[str, str]]:
        return records.read(self.redis, self.keys, number=number.lstrip("+"), since=since,
                            until=until)

    async def reload(self) -> tuple[bool, str, dict[str, Any]]:
        return ((True, "reloaded", {}) if self.reload_ok
                else (False, "policy.toml: bad keyword", {}))

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        try:
            await self.redis.ping()
            redis_state = "ok"
        except aioredis.RedisError:
            redis_state = "unreachable"
        ok = redis_state == "ok" and all(v == "bound" for v in self.carriers.values())
        return ok, {"redis": redis_state, "carriers": dict(self.carriers)}

    def liveness(self) -> dict[str, Any]:
        return {"uptime_s": 1.0, "consumer": "test-1"}


Start = Callable[..., Awaitable[HttpServer]]


@pytest.fixture
def backend(redis: aioredis.Redis, keys: Keys) -> RedisBackend:
    return RedisBackend(redis, keys)


@pytest.fixture
async def start(backend: RedisBackend) -> AsyncIterator[Start]:
    servers: list[HttpServer] = []

    async def _start(**kw: Any) -> HttpServer:
        be: Backend = kw.pop("backend", backend)
        kw.setdefault("api_key_hashes", [hash_key("other-key"), hash_key(KEY)])
        kw.setdefault("max_body_bytes", 256 * 1024)
        server = HttpServer(kw.pop("listen", "127.0.0.1:0"), be, **kw)
        await server.start()
        servers.append(server)
        return server

    yield _start
    for s in servers:
        await s.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as s:
        yield s


def url(server: HttpServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


MSG = {"to": "+8613800138000", "text": "【京东】您的验证码是 123456", "category": "otp"}


# Intake ----------------------------------------------------------------------------------
async def test_single_message_is_queued(
    start: Start, http: aiohttp.ClientSession, redis: aioredis.Redis, keys: Keys,
    backend: RedisBackend,
) -> None:
    server = await start()
    assert server.port > 0
    async with http.post(url(server, "/v1/messages"), json=MSG) as r:
        assert r.status == 202
        assert r.content_type == "application/json"
        body = await r.json()
    [res] = body["results"]
    assert res["index"] == 0 and res["duplicate"] is False and res["id"]
    entries = await redis.xrange(keys.queue("otp"))
    assert [e[1]["id"] for e in entries] == [res["id"]]
    assert entries[0][1]["to"] == "+8613800138000"
    assert backend.sources == ["http"]


async def test_batch_with_idempotency_reports_duplicates(
    start: Start, http: aiohttp.ClientSession, redis: aioredis.Redis, keys: Keys
) -> None:
    server = await start()
    batch = [dict(MSG, idempotency_key="k1"), dict(MSG, category="marketing", text="hi 回TD退订"),
             dict(MSG, idempotency_key="k1")]
    async with http.post(url(server, "/v1/messages"), json=batch) as r:
        assert r.status == 202
        results = (await r.json())["results"]
    assert [x["index"] for x in results] == [0, 1, 2]
    assert [x["duplicate"] for x in results] == [False, False, True]
    assert results[2]["id"] == results[0]["id"]
    assert await redis.xlen(keys.queue("otp")) == 1
    assert await redis.xlen(keys.queue("marketing")) == 1


async def test_invalid_items_422_and_valid_ones_still_queued(
    start: Start, http: aiohttp.ClientSession, redis: aioredis.Redis, keys: Keys
) -> None:
    server = await start()
    batch = [MSG, {"to": "12", "text": "x"}, dict(MSG, category="nope"), "not an object",
             dict(MSG, colour="red")]
    async with http.post(url(server, "/v1/messages"), json=batch) as r:
        assert r.status == 422
        body = await r.json()
    assert body["error"]["code"] == "invalid_items"
    assert body["accepted"] == 1 and body["rejected"] == 4
    res = body["results"]
    assert res[0]["id"] and "errors" not in res[0]
    assert res[1]["errors"][0]["field"] == "to"
    assert res[2]["errors"][0]["field"] == "category"
    assert res[3]["errors"][0]["field"] == "$"
    assert res[4]["errors"][0]["field"] == "colour"
    assert all(e["reason"] for x in res[1:] for e in x["errors"])
    # The valid item was queued: the answer tells the client which one.
    entries = await redis.xrange(keys.queue("otp"))
    assert [e[1]["id"] for e in entries] == [res[0]["id"]]


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"{not json", "bad_json"), (b"", "bad_json"), (b"42", "bad_json"), (b'"x"', "bad_json"),
     (b"[]", "empty")],
)
async def test_unparsable_or_wrong_shape_is_400(
    start: Start, http: aiohttp.ClientSession, body: bytes, code: str
) -> None:
    server = await start()
    async with http.post(url(server, "/v1/messages"), data=body,
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == code


async def test_body_over_limit_is_413(start: Start, http: aiohttp.ClientSession) -> None:
    server = await start(max_body_bytes=4096)
    big = [dict(MSG, ref=f"r{i}") for i in range(100)]
    async with http.post(url(server, "/v1/messages"), json=big) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "too_large"


async def test_chunked_body_over_limit_is_413(start: Start, http: aiohttp.ClientSession) -> None:
    server = await start(max_body_bytes=4096)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"["
        for i in range(200):
            yield msgspec.json.encode(dict(MSG, ref=f"r{i}")) + b","
        yield b"{}]"

    async with http.post(url(server, "/v1/messages"), data=chunks()) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "too_large"


async def test_too_many_items_is_413(
    start: Start, http: aiohttp.ClientSession, redis: aioredis.Redis, keys: Keys
) -> None:
    server = await start(max_body_bytes=1024 * 1024)
    async with http.post(url(server, "/v1/messages"), json=[MSG] * (MAX_ITEMS + 1)) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "too_many_items"
    assert await redis.exists(keys.queue("otp")) == 0
    async with http.post(url(server, "/v1/messages"), json=[MSG] * MAX_ITEMS) as r:
        assert r.status == 202
    assert await redis.xlen(keys.queue("otp")) == MAX_ITEMS


async def test_draining_refuses_intake_and_fails_readiness(
    start: Start, http: aiohttp.ClientSession
) -> None:
    server = await start()
    server.drain()
    async with http.post(url(server, "/v1/messages"), json=MSG) as r:
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "draining"
    async with http.get(url(server, "/readyz")) as r:
        assert r.status == 503
        assert await r.json() == {"ready": False, "draining": True}
    async with http.get(url(server, "/healthz")) as r:
        assert r.status == 200


# Auth ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", f"Basic {KEY}", "Bearer ", KEY, f"Bearer {KEY}x"]
)
async def test_missing_or_wrong_key_is_401(
    start: Start, redis: aioredis.Redis, keys: Keys, header: str | None
) -> None:
    server = await start()
    headers = {} if header is None else {"Authorization": header}
    async with aiohttp.ClientSession() as s:
        for method, path in (("POST", "/v1/messages"), ("GET", "/v1/messages/abc"),
                             ("GET", "/v1/optouts/+8613800138000"), ("POST", "/admin/reload")):
            async with s.request(method, url(server, path), json=MSG, headers=headers) as r:
                assert r.status == 401, (method, path)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert (await r.json())["error"]["code"] == "unauthorized"
    assert await redis.exists(keys.queue("otp")) == 0


async def test_either_configured_key_works_case_insensitive_scheme(start: Start) -> None:
    server = await start()
    async with aiohttp.ClientSession() as s:
        for header in (f"bearer {KEY}", "Bearer other-key"):
            async with s.post(url(server, "/v1/messages"), json=MSG,
                              headers={"Authorization": header}) as r:
                assert r.status == 202


async def test_no_keys_on_loopback_is_open(start: Start) -> None:
    server = await start(api_key_hashes=[])
    async with aiohttp.ClientSession() as s, s.post(url(server, "/v1/messages"), json=MSG) as r:
        assert r.status == 202


def test_no_keys_off_loopback_fails_closed(backend: RedisBackend) -> None:
    # Not started: binding every interface in a test is not wanted; the decision is local.
    server = HttpServer("0.0.0.0:8780", backend, api_key_hashes=[], max_body_bytes=1024)
    assert not server._authorized("")
    assert not server._authorized(f"Bearer {KEY}")
    keyed = HttpServer("0.0.0.0:8780", backend, api_key_hashes=[hash_key(KEY)],
                       max_body_bytes=1024)
    assert keyed._authorized(f"Bearer {KEY}")


def test_listen_parsing_and_loopback() -> None:
    assert parse_listen("127.0.0.1:8780") == ("127.0.0.1", 8780)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":8780") == ("", 8780)
    for bad in ("8780", "host:", "h:99999"):
        with pytest.raises(ValueError, match=r"http\.listen"):
            parse_listen(bad)
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("") and not is_loopback("10.0.0.1")


async def test_public_routes_need_no_key(start: Start) -> None:
    server = await start()
    async with aiohttp.ClientSession() as s:
        for path in ("/metrics", "/healthz", "/readyz", "/openapi.json"):
            async with s.get(url(server, path)) as r:
                assert r.status == 200, path


# Status, opt-outs, reload ----------------------------------------------------------------
async def test_status_record_and_404(
    start: Start, http: aiohttp.ClientSession, redis: aioredis.Redis, keys: Keys
) -> None:
    server = await start()
    await redis.hset(keys.status("m-1"), mapping={
        "state": "submitted", "carrier": "cmcc", "segments": "2", "p0": "a1", "p1": "a2",
        "submitted_at": "1714550000.5"})
    async with http.get(url(server, "/v1/messages/m-1")) as r:
        assert r.status == 200
        rec = await r.json()
    assert rec == {"id": "m-1", "state": "submitted", "carrier": "cmcc", "segments": 2,
                   "parts": ["a1", "a2"], "submitted_at": 1714550000.5}
    for missing in ("m-2", "bad%20id"):
        async with http.get(url(server, f"/v1/messages/{missing}")) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "not_found"


async def test_status_after_submit(start: Start, http: aiohttp.ClientSession) -> None:
    server = await start()
    async with http.post(url(server, "/v1/messages"), json=dict(MSG, id="order-42")) as r:
        assert (await r.json())["results"][0]["id"] == "order-42"
    async with http.get(url(server, "/v1/messages/order-42")) as r:
        rec = await r.json()
    assert rec["state"] == "queued" and rec["category"] == "otp"


async def test_optouts_add_check_remove_with_scope(
    start: Start, http: aiohttp.ClientSession, redis: aioredis.Redis, keys: Keys
) -> None:
    server = await start()
    number = "+8613800138000"
    path = url(server, f"/v1/optouts/{number}")
    async with http.post(path) as r:
        assert r.status == 200
        body = await r.json()
    assert body["number"] == number and set(body["opted_out"]) == {"*"}
    async with http.post(path, params={"scope": "【京东】"}) as r:
        assert set((await r.json())["opted_out"]) == {"*", "【京东】"}
    assert set(await redis.hkeys(keys.optout(number))) == {"*", "【京东】"}
    async with http.delete(path) as r:
        assert r.status == 200
    async with http.get(path) as r:
        assert r.status == 200
        assert set((await r.json())["opted_out"]) == {"【京东】"}
    async with http.get(url(server, "/v1/optouts/12ab")) as r:
        assert r.status == 422
        assert (await r.json())["errors"][0]["field"] == "number"


async def test_reload_ok_and_failed(
    start: Start, http: aiohttp.ClientSession, backend: RedisBackend
) -> None:
    server = await start()
    async with http.post(url(server, "/admin/reload")) as r:
        assert r.status == 200
        assert await r.json() == {"ok": True, "message": "reloaded"}
    backend.reload_ok = False
    async with http.post(url(server, "/admin/reload")) as r:
        assert r.status == 422  # the file's fault, not the server's
        body = await r.json()
    assert body["ok"] is False and "bad keyword" in body["message"]
    assert body["error"]["code"] == "reload_failed"


# Health and metrics ----------------------------------------------------------------------
async def test_healthz_and_readyz(
    start: Start, http: aiohttp.ClientSession, backend: RedisBackend
) -> None:
    server = await start()
    async with http.get(url(server, "/healthz")) as r:
        assert r.status == 200
        assert await r.json() == {"status": "ok", "uptime_s": 1.0, "consumer": "test-1"}
    async with http.get(url(server, "/readyz")) as r:
        assert r.status == 200
        assert await r.json() == {"ready": True, "redis": "ok", "carriers": {"cmcc": "bound"},
                                  "carriers_bound": True}
    # Binds down: intake is still ready (messages queue); /readyz/carriers says so.
    backend.carriers["cmcc"] = "no bind up"
    async with http.get(url(server, "/readyz")) as r:
        assert r.status == 200
        body = await r.json()
    assert body["ready"] is True and body["carriers_bound"] is False
    async with http.get(url(server, "/readyz/carriers")) as r:
        assert r.status == 503
        body = await r.json()
    assert body["ready"] is False and body["carriers"]["cmcc"] == "no bind up"


async def test_readyz_when_redis_is_unreachable(start: Start, http: aiohttp.ClientSession,
                                                keys: Keys) -> None:
    # A client to a port nobody listens on: the real "Redis is down" answer.
    from gatewayd.store.embedded import free_port

    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", decode_responses=True,
                             socket_connect_timeout=1)
    try:
        server = await start(backend=RedisBackend(dead, keys))
        async with http.get(url(server, "/readyz")) as r:
            assert r.status == 503
            assert (await r.json())["redis"] == "unreachable"
    finally:
        await dead.aclose()


async def test_readyz_backend_exception_is_503_json(start: Start,
                                                    http: aiohttp.ClientSession) -> None:
    class Broken(RedisBackend):
        async def readiness(self) -> tuple[bool, dict[str, Any]]:
            raise ConnectionError("boom")

    server = await start(backend=Broken(None, Keys()))  # type: ignore[arg-type]
    async with http.get(url(server, "/readyz")) as r:
        assert r.status == 503
        assert (await r.json())["error"] == "ConnectionError: boom"


async def test_metrics_exposition(start: Start, http: aiohttp.ClientSession) -> None:
    server = await start()
    async with http.post(url(server, "/v1/messages"), json=MSG) as r:
        assert r.status == 202
    async with aiohttp.ClientSession() as anon, anon.get(url(server, "/v1/messages/x")) as r:
        assert r.status == 401
    async with http.get(url(server, "/metrics")) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = await r.text()
    from gatewayd.ops.top import parse

    samples = parse(text)
    ok = ("gatewayd_http_requests_total",
          (("method", "POST"), ("route", "/v1/messages"), ("status", "202")))
    denied = ("gatewayd_http_requests_total",
              (("method", "GET"), ("route", "/v1/messages/{id}"), ("status", "401")))
    assert samples[ok] >= 1 and samples[denied] >= 1
    assert "gatewayd_bind_up" in text and "gatewayd_queue_depth" in text


async def test_unknown_route_and_method_are_json(start: Start, http: aiohttp.ClientSession
                                                 ) -> None:
    server = await start()
    async with http.get(url(server, "/v2/nothing")) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"
    async with http.put(url(server, "/v1/messages")) as r:
        assert r.status == 405
        assert (await r.json())["error"]["code"] == "method_not_allowed"


async def test_backend_crash_is_500_json(start: Start, http: aiohttp.ClientSession) -> None:
    class Crashing(RedisBackend):
        async def status(self, msg_id: str) -> dict[str, Any] | None:
            raise RuntimeError("bug")

    server = await start(backend=Crashing(None, Keys()))  # type: ignore[arg-type]
    async with http.get(url(server, "/v1/messages/m1")) as r:
        assert r.status == 500
        assert (await r.json())["error"]["code"] == "internal"


async def test_port_in_use_raises(start: Start, backend: RedisBackend) -> None:
    first = await start()
    second = HttpServer(f"127.0.0.1:{first.port}", backend, api_key_hashes=[],
                        max_body_bytes=1024)
    with pytest.raises(OSError):
        await second.start()


async def test_optout_backend_rejection_is_422(start: Start, http: aiohttp.ClientSession) -> None:
    class Picky(RedisBackend):
        async def optout(self, action: Literal["add", "remove", "check"], number: str,
                         scope: str, category: str = "") -> dict[str, Any]:
            raise ValueError(f"{number!r}: not an E.164 number")

    server = await start(backend=Picky(None, Keys()))  # type: ignore[arg-type]
    async with http.post(url(server, "/v1/optouts/+8613800138000")) as r:
        assert r.status == 422
        body = await r.json()
    assert body["error"]["code"] == "invalid" and "E.164" in body["error"]["message"]
