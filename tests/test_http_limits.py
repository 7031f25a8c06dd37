"""HTTP server limits against the real daemon over raw sockets: slow heads (slowloris),
slow bodies, idle keep-alive, the connection cap, and hostile requests answered 4xx."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.daemon import Daemon
from gatewayd.ops import metrics
from tests.e2e_helpers import Smsc, load, running_daemon, write_config

KEY = "limits-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CAP = 20


async def _daemon(tmp_path: Path, redis_url: str, smsc: Smsc, idle_timeout_s: float
                  ) -> AsyncIterator[Daemon]:
    sim = await smsc()
    p = write_config(tmp_path, redis_url=redis_url, sim_port=sim.port, http=True)
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    p.write_text(p.read_text().replace('listen = "127.0.0.1:0"', f'''listen = "127.0.0.1:0"
api_keys = ["{digest}"]
max_connections = {CAP}
idle_timeout_s = {idle_timeout_s}
body_timeout_s = 1.0'''))
    async with running_daemon(load(p)) as d:
        yield d


@pytest.fixture
async def daemon(tmp_path: Path, redis_url: str, redis: Any, smsc: Smsc
                 ) -> AsyncIterator[Daemon]:
    # `redis`: a flushed database, so no earlier test's keys reach this daemon's log.
    async for d in _daemon(tmp_path, redis_url, smsc, 1.0):
        yield d


@pytest.fixture
async def capped_daemon(tmp_path: Path, redis_url: str, redis: Any, smsc: Smsc
                        ) -> AsyncIterator[Daemon]:
    # The connection-cap test holds CAP connections with partial heads while it opens
    # 3 * CAP more; a 1 s head time-out closed held ones on a loaded machine before the
    # extras arrived (then an extra was served, not refused). The cap, not the timer,
    # is what that test is about.
    async for d in _daemon(tmp_path, redis_url, smsc, 30.0):
        yield d


async def connect(d: Daemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert d.http is not None
    return await asyncio.open_connection("127.0.0.1", d.http.port)


async def read_until_closed(reader: asyncio.StreamReader, limit_s: float = 15.0) -> bytes:
    """Everything the server sends until it closes (bounded, so a hang fails the test)."""
    data = b""
    try:
        async with asyncio.timeout(limit_s):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionResetError:
        pass
    return data


async def test_slow_head_is_cut_off(daemon: Daemon) -> None:
    reader, writer = await connect(daemon)
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
    closed = False
    # A header line every 0.2 s, for ever: the server must close long before 60 lines.
    for n in range(60):
        try:
            writer.write(f"X-Slow-{n}: {'a' * 10}\r\n".encode())
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        try:
            if await asyncio.wait_for(reader.read(1024), 0.2) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except ConnectionError:
            closed = True
            break
    writer.close()
    assert closed, "a head trickled for 12 s and the connection is still open"


async def test_idle_keepalive_is_closed(daemon: Daemon) -> None:
    reader, writer = await connect(daemon)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await read_until_closed(reader)
    writer.close()
    # Answered, kept alive, then closed by the server while idle (read_until_closed
    # returned: the server closed it; a hang would have raised TimeoutError).
    assert data.startswith(b"HTTP/1.1 200")


async def test_slow_body_gets_408(daemon: Daemon) -> None:
    reader, writer = await connect(daemon)
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + KEY.encode() + b"\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200\r\n\r\n[{\"to\":")
    await writer.drain()
    data = await read_until_closed(reader)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b'"timeout"' in data


async def test_connection_cap_bounds_descriptors(capped_daemon: Daemon) -> None:
    daemon = capped_daemon
    fds_before = len(os.listdir("/proc/self/fd"))
    held = [await connect(daemon) for _ in range(CAP)]
    # Each held connection has a request in flight (a partial head), so none is idle.
    for _r, w in held:
        w.write(b"GET /healthz HTTP/1.1\r\n")
        await w.drain()
    extra = [await connect(daemon) for _ in range(3 * CAP)]
    answers = await asyncio.gather(*(read_until_closed(r) for r, _w in extra))
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    assert len(refused) == len(extra), answers[:3]
    assert all(b"too_many_connections" in a and b"Retry-After: 1" in a for a in refused)
    for _r, w in extra:
        w.close()
    # This process holds both ends of each connection: CAP held ones on both sides, the
    # refused ones on our side only (the server closed its end at once).
    fds_open = len(os.listdir("/proc/self/fd")) - fds_before
    assert fds_open <= 2 * CAP + len(extra) + 5
    assert metrics.REGISTRY.get_sample_value(
        "gatewayd_http_connections", {"listener": "api"}) == CAP
    for _r, w in held:
        w.close()
    # Places free again: new connections are served.
    assert daemon.http is not None
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            try:
                async with http.get(f"http://127.0.0.1:{daemon.http.port}/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        assert r.status == 200


async def test_hostile_requests_get_4xx_and_one_log_line(
    daemon: Daemon, caplog: pytest.LogCaptureFixture,
) -> None:
    assert daemon.http is not None
    base = f"http://127.0.0.1:{daemon.http.port}"
    caplog.set_level(logging.WARNING, logger="gatewayd.http")
    async with aiohttp.ClientSession() as http:
        deep = b'{"to": "+8613800138000", "text": "x", "json": ' + b"[" * 10_000 \
            + b"]" * 10_000 + b"}"
        async with http.post(f"{base}/v1/messages", data=deep, headers=AUTH) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "bad_json"
        deep_array = b"[" * 10_000 + b"]" * 10_000
        async with http.post(f"{base}/v1/messages", data=deep_array, headers=AUTH) as r:
            assert r.status == 400
        async with http.put(f"{base}/v1/messages", headers=AUTH) as r:
            assert r.status == 405
            assert "POST" in r.headers["Allow"]
            assert (await r.json())["error"]["code"] == "method_not_allowed"
    # Non-UTF-8 bytes in Authorization (aiohttp's client refuses to send them: raw).
    for _ in range(2):
        reader, writer = await connect(daemon)
        writer.write(b"GET /v1/messages/abc HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer \xff\xfe\x80\r\nConnection: close\r\n\r\n")
        await writer.drain()
        data = await read_until_closed(reader)
        writer.close()
        assert data.startswith(b"HTTP/1.1 401"), data[:200]
    # Malformed requests, twenty times: 400 each, and one WARNING line without a traceback.
    for _ in range(20):
        reader, writer = await connect(daemon)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        await writer.drain()
        data = await read_until_closed(reader)
        writer.close()
        assert data[:12] in (b"HTTP/1.1 400", b"HTTP/1.0 400"), data[:200]
    malformed = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(malformed) == 1
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in malformed)
    assert "\n" not in malformed[0].getMessage()
    unauthorized = [r for r in caplog.records if "unauthorized" in r.getMessage()]
    assert len(unauthorized) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(("section", "line", "key"), [
    ("redis", "connections = 8", "redis.connections"),  # under dispatch_workers + 8
    ("redis", "intake_connections = 0", "redis.intake_connections"),
    ("http", "max_connections = 0", "http.max_connections"),
    ("http", "idle_timeout_s = 0", "http.idle_timeout_s"),
    ("http", "body_timeout_s = -1", "http.body_timeout_s"),
    ("links", "max_connections = 0", "links.max_connections"),
])
def test_check_config_refuses_bad_limits(tmp_path: Path, section: str, line: str,
                                         key: str) -> None:
    from gatewayd.config import load_config
    from gatewayd.errors import ConfigError

    p = tmp_path / "gw.toml"
    p.write_text(f'[{section}]\n{line}\n\n[[carrier]]\nname = "a"\nhost = "127.0.0.1"\n'
                 'system_id = "acme"\npassword = "secret"\nmo_country_code = "86"\n',
                 encoding="utf-8")
    p.chmod(0o600)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value).startswith(f"{p}: {key}: ")


async def test_redirector_has_the_same_cap(redis: Any, redis_url: str, keys: Any,
                                           tmp_path: Path) -> None:
    from gatewayd.config import load_config
    from gatewayd.http.links import LinkServer
    from gatewayd.pipeline.events import Ledger

    cfg = load_config(write_config(tmp_path, redis_url=redis_url, sim_port=1))
    srv = LinkServer("127.0.0.1:0", redis, keys, Ledger(keys, cfg, redis), max_connections=5)
    await srv.start()
    try:
        held = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(5)]
        for _r, w in held:
            w.write(b"GET /abc")  # a request under way
            await w.drain()
        extra = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(10)]
        answers = await asyncio.gather(*(read_until_closed(r) for r, _w in extra))
        assert all(a.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in a
                   for a in answers), answers[:2]
        for _r, w in (*held, *extra):
            w.close()
        # Places free again: a request is answered (404: no such code).
        for _ in range(50):
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            w.write(b"GET /nosuchcode1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await read_until_closed(r)
            w.close()
            if data.startswith(b"HTTP/1.1 404"):
                break
            await asyncio.sleep(0.1)
        assert data.startswith(b"HTTP/1.1 404"), data[:100]
    finally:
        await srv.stop()
